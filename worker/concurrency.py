"""``lf.Concurrency``: at most N attempts of a step at once per key, across every worker.

The gate is at the worker, just before a step would take a worker slot: every way
a step arrives (its first dispatch, a retry from the timer index, the reconciler's
re-send, an in-process hand-over) passes there. A step that finds its key's slots
full is parked in Redis with its message (``eventlog/slots.py``) and its delivery
is acked: it holds neither a RabbitMQ message nor a worker slot while it waits.
When a holder's attempt ends (whatever the outcome, or a shutdown), its slot is
released and the oldest waiters are promoted; their messages are published again,
and the worker that takes them finds its slot already held for it.

A worker renews the leases of the slots its running steps hold with its presence
mark; a worker that dies stops renewing, its slots expire, and the next acquire,
release or the reconciler's sweep promotes the waiters.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import structlog
from ledgerflow.broker import Activation, Broker, StepMessage
from ledgerflow.broker.messages import decode_message
from ledgerflow.eventlog.errors import (
    ConfigurationError,
    InvalidArgumentError,
    MalformedMessageError,
)
from ledgerflow.eventlog.retrying import retrying
from ledgerflow.eventlog.slots import MAX_CAPACITY, MAX_KEY, Slots

log = structlog.get_logger("ledgerflow.concurrency")

LEASE_MS: Final = 60_000
"""A held slot's lease; renewed every presence beat while its step runs."""
LEASE_ENV: Final = "LEDGERFLOW_SLOT_LEASE_MS"


def lease_ms() -> int:
    """The slot lease: ``LEASE_MS``, or ``LEDGERFLOW_SLOT_LEASE_MS`` (5,000-3,600,000).

    Shorter frees a dead worker's slots sooner, at the price of renewals that must
    arrive in time (every few seconds, with the presence mark).
    """
    text = os.environ.get(LEASE_ENV, "").strip()
    if not text:
        return LEASE_MS
    if not text.isdigit() or not 5_000 <= int(text) <= 3_600_000:
        raise ConfigurationError(f"{LEASE_ENV} must be 5000-3600000 (ms), not {text[:40]!r}")
    return int(text)


@dataclass(frozen=True)
class Concurrency:
    """At most ``limit`` attempts at once per key.

    ``@lf.step(concurrency=lf.Concurrency(2, key="tenant"))``.

    ``key``: the name of an argument whose value is the key, or a function of the
    step's arguments returning it, or None (one key for the whole step). ``name``
    shares one limit among several steps (default: the step's own name).
    """

    limit: int
    key: str | Callable[..., Any] | None = None
    name: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.limit, bool) or not isinstance(self.limit, int):
            raise ConfigurationError(f"Concurrency.limit must be an integer, not {self.limit!r}")
        if not 1 <= self.limit <= MAX_CAPACITY:
            raise ConfigurationError(
                f"Concurrency.limit must be 1-{MAX_CAPACITY}, not {self.limit}"
            )
        if self.key is not None and not isinstance(self.key, str) and not callable(self.key):
            raise ConfigurationError("Concurrency.key must be an argument name or a function")
        if self.name is not None and not (isinstance(self.name, str) and 0 < len(self.name) <= 200):
            raise ConfigurationError("Concurrency.name must be a name of 1-200 characters")

    def bound_to(self, step_name: str, signature: inspect.Signature | None) -> Concurrency:
        """This limit as a step declares it: named, its key argument checked to exist."""
        if (
            isinstance(self.key, str)
            and signature is not None
            and self.key not in signature.parameters
        ):
            raise ConfigurationError(
                f"step {step_name}: Concurrency key {self.key!r} is not one of its parameters"
            )
        return dataclasses.replace(self, name=self.name or step_name)

    def key_of(
        self, signature: inspect.Signature | None, args: Sequence[Any], kwargs: dict[str, Any]
    ) -> str:
        """The key of one call, from its (decoded) arguments; InvalidArgumentError if unusable."""
        return call_key(self.key, signature, args, kwargs, f"concurrency limit {self.name!r}")


def call_key(
    spec: str | Callable[..., Any] | None,
    signature: inspect.Signature | None,
    args: Sequence[Any],
    kwargs: dict[str, Any],
    what: str,
) -> str:
    """A limit's key for one call: an argument's value, a function's answer, or "" (none).

    A key that is not text is its ``repr``; over ``MAX_KEY`` characters it is refused
    (InvalidArgumentError): the key names Redis state and shows in metrics.
    """
    if spec is None:
        return ""
    if callable(spec):
        value = spec(*args, **kwargs)
    else:
        if signature is None:
            raise InvalidArgumentError(f"cannot find argument {spec!r} without a signature")
        try:
            bound = signature.bind_partial(*args, **kwargs)
        except TypeError as exc:
            raise InvalidArgumentError(f"arguments do not fit the step: {exc}") from None
        bound.apply_defaults()
        value = bound.arguments.get(spec)
    text = value if isinstance(value, str) else repr(value)
    if len(text) > MAX_KEY:
        raise InvalidArgumentError(f"key of {what} is over {MAX_KEY} characters: use a shorter key")
    return text


@dataclass(frozen=True, slots=True)
class Held:
    limit: str
    key: str
    member: str
    capacity: int


class SlotLeases:
    """The slots this worker's running steps hold: renewed with the presence mark."""

    def __init__(self, slots: Slots) -> None:
        self._slots = slots
        self._held: dict[str, Held] = {}

    async def acquire(self, held: Held, message: bytes) -> tuple[bool, list[bytes]]:
        granted, promoted = await self._slots.acquire_slot(
            held.limit, held.key, held.member, held.capacity, lease_ms(), message
        )
        if granted:
            self._held[held.member + "\0" + held.limit] = held
        return granted, promoted

    async def release(self, held: Held) -> list[bytes]:
        self._held.pop(held.member + "\0" + held.limit, None)
        return await self._slots.release_slot(
            held.limit, held.key, held.member, held.capacity, lease_ms()
        )

    async def renew(self) -> None:
        if self._held:
            await self._slots.renew_slots(
                [(h.limit, h.key, h.member) for h in self._held.values()], lease_ms()
            )


async def send_promoted(broker: Broker, promoted: Sequence[bytes]) -> int:
    """Publish the parked messages of what slots just let in; how many went out.

    Steps' messages go to their queues, runs' activations (``@lf.workflow(concurrency=)``)
    to the runs queue. Each is read as hostile bytes: one that does not decode to either
    is dropped with a warning (its step or run is still in its log, unstarted, so the
    reconciler sends it again).
    """
    sent = 0
    for body in promoted:
        try:
            message = decode_message(body)
        except MalformedMessageError as exc:
            log.warning("a parked message is unreadable; dropped", error=str(exc))
            continue
        if isinstance(message, StepMessage):
            send = functools.partial(broker.publish_step, message)
        elif isinstance(message, Activation):
            send = functools.partial(broker.publish_activation, message)
        else:
            log.warning("a parked message is neither a step nor an activation; dropped")
            continue
        await retrying("publish what a slot let in", send)
        sent += 1
    return sent
