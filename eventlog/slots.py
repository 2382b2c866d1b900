"""Concurrency slots: at most N holders per (limit, key), the rest waiting in order.

A step declared with ``lf.Concurrency`` takes a slot before it starts. A step that
finds no free slot does not wait in a worker or in RabbitMQ: its message is parked
here, in arrival order, and the worker acks it. Whoever frees a slot (the holder's
release, an acquire or the reconciler finding an expired holder) promotes the
oldest waiters into the free slots and gets their messages back to publish.

Holders carry an expiry (a lease) that their worker renews while the step runs, so
a worker that dies frees its slots within a lease. Members are ``run|corr``: every
attempt of a step holds the same slot, and releasing twice is harmless.

Why the keys are named by a digest of (limit, key): the key is computed from a
step's arguments, so its text is the user's; a digest keeps key names bounded and
free of hash-tag braces, and puts each (limit, key) in its own cluster slot.
"""

from __future__ import annotations

import enum
import hashlib
from abc import abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Protocol

from .errors import InvalidArgumentError

MAX_LIMIT_NAME: Final = 200
MAX_KEY: Final = 256
"""A key computed from arguments longer than this is refused (name a shorter one)."""
MAX_CAPACITY: Final = 100_000
MAX_WAITING: Final = 1_000_000
"""Parked messages per (limit, key) before a newcomer is refused (the step then retries)."""
MAX_PROMOTE: Final = 100
"""Waiters one call promotes at most (the rest by the next release or sweep)."""


def slot_id(limit: str, key: str) -> str:
    """The (limit, key) pair's key suffix: bounded, brace-free, its own cluster slot."""
    check_slot(limit, key)
    return hashlib.sha1(f"{limit}\0{key}".encode(), usedforsecurity=False).hexdigest()[:20]


def check_slot(limit: str, key: str) -> None:
    if not isinstance(limit, str) or not 0 < len(limit) <= MAX_LIMIT_NAME:
        raise InvalidArgumentError(f"invalid concurrency limit name {limit!r}")
    if not isinstance(key, str) or len(key) > MAX_KEY:
        raise InvalidArgumentError(
            f"concurrency key of limit {limit!r} is over {MAX_KEY} characters: use a shorter key"
        )


class SlotKind(enum.StrEnum):
    """What a limit's members are: step attempts (leased while they run) or runs (held
    until the run ends, which the scheduler or the reconciler's sweep releases)."""

    STEP = "step"
    RUN = "run"


@dataclass(frozen=True, slots=True)
class SlotUse:
    """One (limit, key) as operators see it."""

    limit: str
    key: str
    holding: int
    waiting: int
    kind: SlotKind = SlotKind.STEP


class Slots(Protocol):
    """Concurrency slots, kept by the event store (Redis or memory)."""

    @abstractmethod
    async def acquire_slot(
        self,
        limit: str,
        key: str,
        member: str,
        capacity: int,
        lease_ms: int,
        message: bytes,
        kind: SlotKind = SlotKind.STEP,
    ) -> tuple[bool, list[bytes]]:
        """Take a slot for ``member``, or park ``message`` in line; and the waiters promoted.

        (True, promoted): ``member`` holds a slot (it already did, or one was free and
        no one waited before it). (False, promoted): it waits, ``message`` kept until
        it is promoted. ``promoted``: messages of waiters given a slot now.
        """

    @abstractmethod
    async def release_slot(
        self, limit: str, key: str, member: str, capacity: int, lease_ms: int
    ) -> list[bytes]:
        """Free ``member``'s slot (if it held one); the messages of the waiters promoted."""

    @abstractmethod
    async def renew_slots(self, held: Sequence[tuple[str, str, str]], lease_ms: int) -> None:
        """Extend the leases of the (limit, key, member) slots a live worker holds."""

    @abstractmethod
    async def slot_uses(self) -> list[SlotUse]:
        """Every (limit, key) with a holder or a waiter: what ``ledgerflow limits`` shows."""

    @abstractmethod
    async def run_slot_holders(self) -> list[tuple[str, str, str, int]]:
        """(limit, key, run id, capacity) of every run holding a slot of a workflow's limit."""

    @abstractmethod
    async def promote_waiting(self, lease_ms: int) -> list[bytes]:
        """For every (limit, key) with waiters: drop expired holders, promote into free slots.

        The reconciler's sweep: a slot freed by a lease running out (its worker died)
        has no release to promote the next waiter. Each pair's capacity is the one its
        last acquire gave (the reconciler does not import the app's steps).
        """
