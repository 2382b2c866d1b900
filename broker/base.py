"""The broker contract shared by RabbitMQ and the in-memory broker.

Everything above this layer (workers, schedulers, the reconciler) talks to a
``Broker`` and never to aio-pika, so the embedded mode and the unit tests run
the same code paths as production. Behaviour that does not depend on the
transport (message ids, batching, dead-lettering, turning a failing handler
into a redelivery) lives here once, so the two implementations cannot drift.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Final, TypeVar

import structlog
from ledgerflow.eventlog.codec import brief
from ledgerflow.eventlog.errors import (
    BrokerError,
    MalformedMessageError,
    PayloadTooLargeError,
    PublishError,
)
from ledgerflow.eventlog.names import Names
from ledgerflow.eventlog.text import MAX_REASON, clip

from .messages import Activation, StepBatch, StepMessage, decode_message, encode_message
from .topology import MAX_MESSAGE_BYTES

M = TypeVar("M", StepMessage, StepBatch, Activation)

log = structlog.get_logger(__name__)

DEFAULT_DELIVERY_LIMIT: Final = 20
"""Redeliveries RabbitMQ allows before it dead-letters a message by itself."""

MAX_IN_FLIGHT: Final = 1000
"""Unconfirmed publishes one ``publish_many`` keeps outstanding; bounds memory, not speed."""

STEPS_PER_MESSAGE: Final = 32
"""Steps of one run that ``publish_steps`` packs into one message.

Large enough that a fan-out's publishing cost drops by an order of magnitude
(bench: fan-out), small enough that a 10,000-step fan-out still spreads over
hundreds of messages, hence over every worker.
"""

REASON_HEADER: Final = "x-ledgerflow-reason"
QUEUE_HEADER: Final = "x-ledgerflow-queue"
DEAD_AT_HEADER: Final = "x-ledgerflow-dead-at"

DELIVERY_LIMIT_REASON: Final = "delivery limit exceeded"
REJECTED_REASON: Final = "rejected"

# Headers the broker maintains itself; copying them onto a republished message would
# make the copy look like it had already been delivered.
BROKER_OWNED_HEADERS: Final = frozenset({"x-delivery-count"})

EARLIER_DELIVERIES_HEADER: Final = "x-ledgerflow-earlier-deliveries"
"""On a copy made by ``Broker.hand_back``: the deliveries the original had before.

The copy is a new message to RabbitMQ (no ``x-delivery-count``), so without this
a redelivered message handed back would lose the attempts its deliveries counted."""

MAX_EARLIER_DELIVERIES: Final = 1000
"""Any header value above this is nonsense (no delivery limit is that high)."""


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One message to publish; ``queue`` is the full queue name (the routing key)."""

    queue: str
    body: bytes
    headers: Mapping[str, Any] | None = None
    message_id: str | None = None


@dataclass(frozen=True, slots=True)
class QueueInfo:
    """What a passive declare tells about a queue: ready messages and consumers."""

    queue: str
    depth: int
    consumers: int


class HeldDeadLetters(list["Delivery"]):
    """The dead letters a ``hold_dead_letters`` block hands out, oldest first, and ``depth``.

    ``depth`` is how many messages the dead queue held when they were taken,
    these included: while they are held, a ``queue_depth`` call does not count
    them, so only the reader itself can tell the true number.
    """

    def __init__(self, deliveries: Iterable[Delivery], *, depth: int) -> None:
        super().__init__(deliveries)
        self.depth = depth


class Delivery(ABC):
    """One received message, to be settled exactly once with ack or nack.

    Settling twice raises instead of being ignored: it means two code paths both
    believe they own the message, which is a bug worth hearing about.
    """

    def __init__(
        self,
        *,
        body: bytes,
        headers: dict[str, Any],
        queue: str,
        redelivered: bool,
        delivery_count: int,
        message_id: str | None,
        timestamp_ms: int | None = None,
    ) -> None:
        self.body = body
        self.headers = headers
        self.queue = queue
        self.redelivered = redelivered
        self.delivery_count = delivery_count
        self.message_id = message_id
        # When it was published (the AMQP ``timestamp`` property), if the publisher said.
        self.timestamp_ms = timestamp_ms
        # When this process got it: how long it has been held unsettled (consumer_timeout).
        self.received_at = time.monotonic()
        self._settled = False

    @property
    def deliveries_before(self) -> int:
        """Deliveries of this message before this one, across hand-backs (``Broker.hand_back``)."""
        carried = self.headers.get(EARLIER_DELIVERIES_HEADER, 0)
        if not isinstance(carried, int) or isinstance(carried, bool):
            carried = 0
        return max(0, self.delivery_count - 1) + min(max(carried, 0), MAX_EARLIER_DELIVERIES)

    def held_for(self) -> float:
        """Seconds since this process received the message."""
        return time.monotonic() - self.received_at

    @property
    def settled(self) -> bool:
        """True once ack or nack was called, even if the call then failed."""
        return self._settled

    async def ack(self) -> None:
        """Remove the message for good; call only after its effects are recorded."""
        self._claim("ack")
        await self._ack()

    async def nack(self, requeue: bool = True) -> None:
        """Give the message back (``requeue``) or dead-letter it (``requeue=False``)."""
        self._claim("nack")
        await self._nack(requeue)

    def _claim(self, operation: str) -> None:
        if self._settled:
            raise BrokerError(
                f"cannot {operation} message {self.message_id!r} from {self.queue!r}: "
                "it was already acked or nacked"
            )
        self._settled = True

    @abstractmethod
    async def _ack(self) -> None: ...

    @abstractmethod
    async def _nack(self, requeue: bool) -> None: ...

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} queue={self.queue!r} message_id={self.message_id!r} "
            f"delivery_count={self.delivery_count}>"
        )


Handler = Callable[[Delivery], Awaitable[None]]


class Consumer(ABC):
    """A running subscription; cancel it to stop receiving."""

    @abstractmethod
    async def cancel(self, *, timeout: float = 10.0) -> None:
        """Stop new deliveries, let running handlers finish for up to ``timeout`` seconds.

        Handlers still running after that are cancelled; whatever they had not
        settled goes back to the queue, so nothing is lost, only redelivered.
        """


class HandlerRunner:
    """Runs one consumer's handlers: bounded concurrency, failures become redeliveries.

    A broker's prefetch bounds unacked messages, not running handlers: a
    handler that acks early and keeps working would let more start. The
    semaphore makes ``prefetch`` a true bound on concurrent handlers.
    """

    def __init__(self, handler: Handler, prefetch: int, queue: str) -> None:
        if prefetch < 1:
            raise ValueError(f"prefetch must be at least 1, got {prefetch}")
        self._handler = handler
        self._queue = queue
        self._slots = asyncio.Semaphore(prefetch)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._owned: set[asyncio.Task[None]] = set()
        self._stopped = False

    def stop(self) -> None:
        """Start no more handlers; deliveries already received stay unsettled and go back."""
        self._stopped = True

    def spawn(self, delivery: Delivery) -> None:
        """Run the handler in a task owned here, not by the delivering library."""
        task = asyncio.get_running_loop().create_task(self.run(delivery))
        self._owned.add(task)
        task.add_done_callback(self._owned.discard)

    async def run(self, delivery: Delivery) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            async with self._slots:
                if not self._stopped:
                    await self._call(delivery)
        finally:
            if task is not None:
                self._tasks.discard(task)

    async def _call(self, delivery: Delivery) -> None:
        try:
            await self._handler(delivery)
        except Exception:
            log.exception(
                "broker.handler_failed",
                queue=self._queue,
                message_id=delivery.message_id,
                delivery_count=delivery.delivery_count,
            )
            if delivery.settled:
                return
            try:
                await delivery.nack(requeue=True)
            except BrokerError as exc:
                # The channel is gone; the broker requeues unacked messages by itself.
                log.warning("broker.nack_failed", queue=self._queue, error=str(exc))

    async def drain(self, timeout: float) -> None:
        """Wait for running handlers, then cancel the ones that overstay."""
        current = asyncio.current_task()
        pending = {t for t in self._tasks if t is not current and not t.done()}
        if not pending:
            return
        _, late = await asyncio.wait(pending, timeout=max(timeout, 0.0))
        for task in late:
            task.cancel()
        if late:
            await asyncio.gather(*late, return_exceptions=True)


class Broker(ABC):
    """Publish with confirms, consume with manual acks, dead-letter what cannot be handled."""

    names: Names
    delivery_limit: int
    _dead_letters_lock: asyncio.Lock | None = None

    # --- lifecycle -----------------------------------------------------------------

    @abstractmethod
    async def connect(self) -> None:
        """Connect and declare the fixed topology; safe to call again."""

    @abstractmethod
    async def close(self) -> None:
        """Cancel consumers (their unacked messages are redelivered) and disconnect."""

    @abstractmethod
    async def declare_step_queue(self, queue: str = "default") -> str:
        """Declare a step queue by short name and return its full name; cached."""

    # --- publishing ----------------------------------------------------------------

    @abstractmethod
    async def _publish_one(self, out: Outgoing) -> None:
        """Publish and wait for the broker's confirm; PublishError if it was not routed."""

    async def publish(
        self,
        queue: str,
        body: bytes,
        *,
        headers: Mapping[str, Any] | None = None,
        message_id: str | None = None,
    ) -> None:
        """Return only once the broker has the message; ``queue`` is a full queue name.

        A body over ``MAX_MESSAGE_BYTES`` is refused (PayloadTooLargeError) before
        anything is sent: every consumer would dead-letter it unread.
        """
        out = Outgoing(queue, body, headers, message_id or _new_id())
        _check_size(out)
        await self._publish_one(out)

    async def publish_many(self, items: Sequence[tuple[str, bytes] | Outgoing]) -> None:
        """Keep many publishes in flight and return when all are confirmed.

        Confirms are awaited together instead of one round trip each, which is
        what makes a fan-out of hundreds of steps cheap. Every message is
        attempted even if some fail, so one bad queue does not hide the rest.
        """
        outgoing = [_as_outgoing(item) for item in items]
        for out in outgoing:  # before any is sent: all or nothing for this reason
            _check_size(out)
        failures: list[BaseException] = []
        for start in range(0, len(outgoing), MAX_IN_FLIGHT):
            chunk = outgoing[start : start + MAX_IN_FLIGHT]
            results = await asyncio.gather(
                *(self._publish_one(out) for out in chunk), return_exceptions=True
            )
            failures.extend(r for r in results if isinstance(r, BaseException))
        if failures:
            raise PublishError(
                f"{len(failures)} of {len(outgoing)} messages were not confirmed; "
                f"first failure: {failures[0]}"
            ) from failures[0]

    async def publish_step(self, msg: StepMessage) -> None:
        """Declare the step's queue on first use, so a new queue name needs no deploy step."""
        full = await self.declare_step_queue(msg.queue)
        await self.publish(full, encode_message(msg), message_id=msg.message_id)

    async def publish_steps(
        self, msgs: Sequence[StepMessage], *, per_message: int = STEPS_PER_MESSAGE
    ) -> None:
        """Publish steps packed per run and queue, with all confirms awaited together.

        A message holds up to ``per_message`` steps, and fewer when their
        arguments would take it over ``MAX_MESSAGE_BYTES`` (each step's may be up
        to its ``max_payload``).
        """
        full_names: dict[str, str] = {}
        for short in dict.fromkeys(m.queue for m in msgs):
            full_names[short] = await self.declare_step_queue(short)
        groups: dict[tuple[str, str], list[StepMessage]] = {}
        for m in msgs:
            groups.setdefault((m.run_id, m.queue), []).append(m)
        outgoing: list[Outgoing] = []
        for (_, queue), group in groups.items():
            for chunk in _chunks(group, max(1, per_message)):
                message: StepMessage | StepBatch = (
                    chunk[0] if len(chunk) == 1 else StepBatch(tuple(chunk))
                )
                outgoing.append(
                    Outgoing(full_names[queue], encode_message(message), None, message.message_id)
                )
        await self.publish_many(outgoing)

    async def publish_activation(self, msg: Activation) -> None:
        await self.publish(self.names.runs_queue, encode_message(msg))

    # --- consuming -----------------------------------------------------------------

    @abstractmethod
    async def consume(self, queue: str, handler: Handler, *, prefetch: int) -> Consumer:
        """Run ``handler`` for each message of the full-named ``queue``, manual ack.

        Up to ``prefetch`` handlers run at once. A handler that raises is logged
        and its message nacked with requeue, so nothing is lost.
        """

    async def receive(self, delivery: Delivery, kind: type[M], *, wrong_kind: str) -> M | None:
        """Decode a delivery as ``kind``; anything else is dead-lettered with its reason.

        None means the message was not for us and has been dealt with: a bad
        message never stops a consumer and is never lost.
        """
        try:
            message = decode_message(delivery.body)
        except MalformedMessageError as exc:
            reason = f"malformed message: {exc}"
        else:
            if kind is StepBatch and isinstance(message, StepMessage):
                # A single step is a batch of one for a consumer that takes batches.
                message = StepBatch((message,))
            if isinstance(message, kind):
                return message
            reason = wrong_kind
        log.warning("message dead-lettered", queue=delivery.queue, reason=brief(reason))
        await self.dead_letter(delivery, reason)
        return None

    async def dead_letter(
        self, delivery: Delivery, reason: str, *, body: bytes | None = None
    ) -> None:
        """Park a message on the dead queue with why and where from, then ack the original.

        The copy is confirmed before the ack, so a crash in between leaves two
        copies rather than none. ``body`` replaces the original body in the copy:
        a batch whose other steps were run parks only the steps it refused. The
        body goes as it came, whatever its size (the broker accepted it once): the
        size check of ``publish`` is for what ledgerflow builds, and refusing here
        would leave the message nowhere.
        """
        headers = {k: v for k, v in delivery.headers.items() if k not in BROKER_OWNED_HEADERS}
        headers[REASON_HEADER] = bounded_reason(reason)
        headers[QUEUE_HEADER] = delivery.queue
        headers[DEAD_AT_HEADER] = int(time.time() * 1000)
        message_id = delivery.message_id or _new_id()
        await self._publish_one(
            Outgoing(
                self.names.dead_queue, delivery.body if body is None else body, headers, message_id
            )
        )
        await delivery.ack()

    async def hand_back(self, delivery: Delivery) -> None:
        """Put a message back at the tail of its queue without it counting as a delivery.

        A nack with requeue counts as a delivery on a quorum queue (``x-delivery-count``
        goes up, and a worker counts every delivery of a step message as an
        attempt), so this publishes a confirmed copy (same body, headers and
        message id, plus the deliveries the original had) and then acks the
        original. A crash in between leaves two copies, never none.
        """
        headers = {k: v for k, v in delivery.headers.items() if k not in BROKER_OWNED_HEADERS}
        headers[EARLIER_DELIVERIES_HEADER] = delivery.deliveries_before
        message_id = delivery.message_id or _new_id()
        await self._publish_one(Outgoing(delivery.queue, delivery.body, headers, message_id))
        await delivery.ack()

    @abstractmethod
    async def get(self, queue: str, *, timeout: float = 0.0) -> Delivery | None:
        """Take one message without a subscription, waiting up to ``timeout`` seconds."""

    @abstractmethod
    async def queue_depth(self, queue: str) -> int:
        """Messages ready for delivery (unacked in-flight ones are not counted)."""

    @abstractmethod
    async def purge(self, queue: str) -> int:
        """Drop every ready message of ``queue``; return how many were dropped."""

    @abstractmethod
    async def queue_info(self, queue: str) -> QueueInfo:
        """Depth and consumer count of a full-named queue, without creating it."""

    @contextlib.asynccontextmanager
    async def hold_dead_letters(self, limit: int) -> AsyncIterator[HeldDeadLetters]:
        """Take up to ``limit`` messages from the head of the dead queue, unsettled.

        The caller may ack some (after publishing a copy elsewhere, confirmed);
        on leaving the block every message not settled goes back to the dead
        queue in its original order. ``held.depth`` says how many messages the
        queue had when read, held ones included (see ``HeldDeadLetters``).

        This is the one way to read the dead queue (``ledgerflow dlq``,
        ``ledgerflow queues``, the dashboard): AMQP has no non-destructive read,
        and this costs a get and a return per message taken (on RabbitMQ, the
        whole queue: see ``RabbitBroker._hold_dead_letters``) but never a copy,
        so it cannot duplicate a message.

        It is only offered for the dead queue: returning a message counts as a
        delivery on a quorum queue, which on a work queue would burn one of the
        step's attempts, while the dead queue has no delivery limit and nobody
        reads its count (a requeue strips it). Messages held here are invisible
        to anyone else until released.

        Readers on one broker object take turns (a lock held for the whole
        block): two overlapping holds would each take part of the queue, so
        each would see an incomplete listing, and whichever released first
        would put its messages back ahead of the other's, reordering the
        queue. Do not nest a hold inside another on the same broker: it would
        wait for itself. Readers in other processes are not serialized; one of
        them reading at the same moment sees fewer messages, and their returns
        may interleave.
        """
        if limit < 0:
            raise ValueError(f"limit must not be negative, got {limit}")
        if self._dead_letters_lock is None:
            # Made on first use, not in __init__: the subclasses own their constructors.
            self._dead_letters_lock = asyncio.Lock()
        async with self._dead_letters_lock, self._hold_dead_letters(limit) as held:
            yield held

    @abstractmethod
    def _hold_dead_letters(self, limit: int) -> AbstractAsyncContextManager[HeldDeadLetters]:
        """``hold_dead_letters`` for this transport, called with the lock held and ``limit >= 0``.

        On leaving, every held message not settled must go back to the head of
        the dead queue in the order it was taken.
        """


def bounded_reason(reason: str) -> str:
    """A dead-letter reason short enough for an AMQP header frame, head and tail kept.

    Reasons quote what came in (a step name, a run id): a hostile 300 KB name would
    otherwise make the header frame too large, RabbitMQ would close the connection,
    and the message would come back to do it again.
    """
    return clip(reason, MAX_REASON)


def _check_size(out: Outgoing) -> None:
    if len(out.body) > MAX_MESSAGE_BYTES:
        raise PayloadTooLargeError(
            f"message {out.message_id!r} to {out.queue!r} is {len(out.body)} bytes, over the "
            f"{MAX_MESSAGE_BYTES}-byte message limit; nothing was published"
        )


# Bytes a step adds to a batch message besides its id, name and arguments (msgpack
# headers of the item and its four fields), and those of the batch itself besides
# its run id, queue and workflow: generous upper bounds, so an estimate never undershoots.
_STEP_OVERHEAD: Final = 32
_BATCH_OVERHEAD: Final = 128


def _chunks(group: list[StepMessage], per_message: int) -> Iterator[list[StepMessage]]:
    """Consecutive runs of steps, each at most ``per_message`` long and one message in size."""
    first = group[0]
    base = _BATCH_OVERHEAD + sum(
        len(text.encode()) for text in (first.run_id, first.queue, first.workflow)
    )
    chunk: list[StepMessage] = []
    size = base
    for step in group:
        cost = _STEP_OVERHEAD + len(step.args) + len(step.step_id.encode())
        cost += len(step.step_name.encode())
        if chunk and (len(chunk) == per_message or size + cost > MAX_MESSAGE_BYTES):
            yield chunk
            chunk, size = [], base
        chunk.append(step)
        size += cost
    if chunk:
        yield chunk


def _as_outgoing(item: tuple[str, bytes] | Outgoing) -> Outgoing:
    if isinstance(item, Outgoing):
        return item if item.message_id else Outgoing(item.queue, item.body, item.headers, _new_id())
    queue, body = item
    return Outgoing(queue, body, None, _new_id())


def _new_id() -> str:
    """Every message gets an id: aio-pika matches returned messages to publishes by it."""
    return uuid.uuid4().hex
