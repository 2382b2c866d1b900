"""Reading and requeueing the dead queue without losing a message (``ledgerflow dlq``).

A dead letter arrives two ways: our own ``Broker.dead_letter`` (headers
``x-ledgerflow-reason``, ``-queue``, ``-dead-at``), or RabbitMQ dead-lettering
a message past its queue's delivery limit or rejected (the ``x-death`` table and
``x-first-death-*`` headers, none of ours). ``describe`` reads either, so an
operator sees one shape. A message is addressed by its message id, which every
publish sets and dead-lettering keeps; one published without an id by someone
else gets a digest of its body instead, stable across listings.

Requeue publishes a copy to the original queue, waits for the confirm, and only
then acks the dead copy: a crash in between leaves two copies (harmless, the
event log records each outcome once), never none.
"""

from __future__ import annotations

import datetime
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from ledgerflow.eventlog.errors import MalformedMessageError

from .base import (
    BROKER_OWNED_HEADERS,
    DEAD_AT_HEADER,
    QUEUE_HEADER,
    REASON_HEADER,
    Broker,
    Delivery,
)
from .messages import Activation, Message, StepBatch, StepMessage, decode_message

REQUEUES_HEADER: Final = "x-ledgerflow-requeues"
"""How often a message was taken out of the dead queue: a second death is worth noticing."""

# Headers that describe a death; a requeued message starts without them.
_DEATH_HEADERS: Final = frozenset(
    {
        REASON_HEADER,
        QUEUE_HEADER,
        DEAD_AT_HEADER,
        "x-death",
        "x-first-death-queue",
        "x-first-death-reason",
        "x-first-death-exchange",
        "x-last-death-queue",
        "x-last-death-reason",
        "x-last-death-exchange",
    }
)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One dead message, described for a table, a detail view or JSON."""

    id: str
    queue: str
    reason: str
    dead_at_ms: int | None
    published_ms: int | None
    kind: str
    run_id: str
    step: str
    message: Message | None
    decode_error: str
    headers: dict[str, Any]
    body: bytes


def message_key(delivery: Delivery) -> str:
    """The id ``dlq show/requeue`` take: the message id, else a digest of the body."""
    if delivery.message_id:
        return delivery.message_id
    return "sha1-" + hashlib.sha1(delivery.body, usedforsecurity=False).hexdigest()[:16]


def describe(delivery: Delivery) -> DeadLetter:
    headers = dict(delivery.headers)
    death = _first_death(headers)
    queue = _text(headers.get(QUEUE_HEADER)) or _text(headers.get("x-first-death-queue"))
    reason = _text(headers.get(REASON_HEADER)) or _text(headers.get("x-first-death-reason"))
    if death is not None:
        queue = queue or _text(death.get("queue"))
        reason = reason or _text(death.get("reason"))
    dead_at = headers.get(DEAD_AT_HEADER)
    if not isinstance(dead_at, int) and death is not None:
        dead_at = _ms(death.get("time"))
    message: Message | None = None
    error = ""
    try:
        message = decode_message(delivery.body)
    except MalformedMessageError as exc:
        error = str(exc)
    kind, run_id, step = "?", "", ""
    if isinstance(message, StepMessage):
        kind, run_id, step = "step", message.run_id, f"{message.step_id} {message.step_name}"
    elif isinstance(message, StepBatch):
        first, last = message.steps[0], message.steps[-1]
        kind, run_id = "steps", message.run_id
        step = f"{first.step_id}..{last.step_id} ({len(message.steps)} steps)"
    elif isinstance(message, Activation):
        kind, run_id = "activation", message.run_id
    return DeadLetter(
        id=message_key(delivery),
        queue=queue,
        reason=reason,
        dead_at_ms=dead_at if isinstance(dead_at, int) else None,
        published_ms=delivery.timestamp_ms,
        kind=kind,
        run_id=run_id,
        step=step,
        message=message,
        decode_error=error,
        headers=headers,
        body=delivery.body,
    )


def requeue_headers(headers: Mapping[str, Any]) -> dict[str, Any]:
    """The headers a requeued copy carries: no death record, no broker delivery count.

    ``x-delivery-count`` must go: workers count attempts from it, and the dead
    queue's own count (raised by every listing) is not the step's.
    """
    kept = {k: v for k, v in headers.items() if k not in _DEATH_HEADERS | BROKER_OWNED_HEADERS}
    previous = headers.get(REQUEUES_HEADER, 0)
    kept[REQUEUES_HEADER] = (previous if isinstance(previous, int) else 0) + 1
    return kept


async def requeue(broker: Broker, delivery: Delivery, letter: DeadLetter) -> None:
    """Publish a copy to the original queue (confirmed), then ack the dead one.

    A message whose original queue is unknown, or no longer routable, stays in
    the dead queue: the publish raises before the ack.
    """
    if not letter.queue:
        raise MalformedMessageError(
            f"dead message {letter.id!r} names no original queue; it stays in the dead queue"
        )
    await broker.publish(
        letter.queue,
        delivery.body,
        headers=requeue_headers(delivery.headers),
        message_id=delivery.message_id,
    )
    await delivery.ack()


def _first_death(headers: Mapping[str, Any]) -> Mapping[str, Any] | None:
    deaths = headers.get("x-death")
    if isinstance(deaths, list) and deaths and isinstance(deaths[-1], Mapping):
        # RabbitMQ puts the most recent death first; the original queue is the oldest's.
        oldest: Mapping[str, Any] = deaths[-1]
        return oldest
    return None


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return "" if value is None else str(value)


def _ms(value: Any) -> int | None:
    if isinstance(value, datetime.datetime):
        return int(value.timestamp() * 1000)
    if isinstance(value, int):
        return value * 1000  # AMQP timestamps are whole seconds
    return None
