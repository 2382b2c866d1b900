"""An in-process broker with RabbitMQ's semantics, for the embedded mode and fast tests.

It imitates what the rest of ledgerflow relies on, as observed on RabbitMQ
3.10 quorum queues, and nothing more: unroutable publishes fail, prefetch
bounds unacked deliveries per consumer, a returned message (nack with requeue,
or its consumer going away) goes back to the head of its queue flagged
redelivered with ``x-delivery-count`` raised by one, and once a message has
been returned more than ``delivery_limit`` times it is dead-lettered instead.
``nack(requeue=False)`` dead-letters too, as a queue with a dead-letter
exchange does. The queues belong to the broker object, like a server's: close()
disconnects consumers but keeps messages, and connect() picks them up again.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from ledgerflow.eventlog.errors import BrokerError, ConfigurationError, PublishError
from ledgerflow.eventlog.names import DEFAULT_STEP_QUEUE, Names

from .base import (
    BROKER_OWNED_HEADERS,
    DEAD_AT_HEADER,
    DEFAULT_DELIVERY_LIMIT,
    DELIVERY_LIMIT_REASON,
    QUEUE_HEADER,
    REASON_HEADER,
    REJECTED_REASON,
    Broker,
    Consumer,
    Delivery,
    Handler,
    HandlerRunner,
    HeldDeadLetters,
    Outgoing,
    QueueInfo,
)


@dataclass(slots=True)
class _Stored:
    body: bytes
    headers: dict[str, Any]
    message_id: str | None
    returns: int = 0
    published_ms: int | None = None


class _MemoryQueue:
    """Ready messages in order, and the consumers waiting for the next one."""

    def __init__(self, name: str, *, dead_letters: bool) -> None:
        self.name = name
        self.dead_letters = dead_letters
        self.ready: deque[_Stored] = deque()
        self._waiters: list[asyncio.Future[None]] = []

    def put(self, stored: _Stored, *, front: bool = False) -> None:
        if front:
            self.ready.appendleft(stored)
        else:
            self.ready.append(stored)
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def take(self) -> _Stored:
        while not self.ready:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            finally:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
        return self.ready.popleft()


class _Channel:
    """What a RabbitMQ channel is to its deliveries: closing it returns the unacked ones."""

    def __init__(self, broker: MemoryBroker, prefetch: int | None) -> None:
        self._broker = broker
        self.slots = asyncio.Semaphore(prefetch) if prefetch else None
        self.unacked: dict[MemoryDelivery, None] = {}
        self.closed = False

    def hand_out(self, delivery: MemoryDelivery) -> None:
        self.unacked[delivery] = None

    def settle(self, delivery: MemoryDelivery) -> None:
        if self.closed:
            raise BrokerError(
                f"cannot settle message {delivery.message_id!r} from {delivery.queue!r}: "
                "its consumer is gone and the message was already returned to the queue"
            )
        del self.unacked[delivery]
        if self.slots is not None:
            self.slots.release()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        # Newest first, each to the head: the queue ends up in the original order.
        for delivery in reversed(list(self.unacked)):
            self._broker._return(delivery._source, delivery._stored)
        self.unacked.clear()


class MemoryDelivery(Delivery):
    def __init__(self, source: _MemoryQueue, stored: _Stored, channel: _Channel) -> None:
        headers = dict(stored.headers)
        if stored.returns:
            headers["x-delivery-count"] = stored.returns
        super().__init__(
            body=stored.body,
            headers=headers,
            queue=source.name,
            redelivered=stored.returns > 0,
            delivery_count=stored.returns + 1,
            message_id=stored.message_id,
            timestamp_ms=stored.published_ms,
        )
        self._source = source
        self._stored = stored
        self._channel = channel
        channel.hand_out(self)

    async def _ack(self) -> None:
        self._channel.settle(self)

    async def _nack(self, requeue: bool) -> None:
        self._channel.settle(self)
        broker = self._channel._broker
        if requeue:
            broker._return(self._source, self._stored)
        else:
            broker._reject(self._source, self._stored)


class MemoryConsumer(Consumer):
    def __init__(
        self, broker: MemoryBroker, queue: _MemoryQueue, handler: Handler, prefetch: int
    ) -> None:
        self._broker = broker
        self._queue = queue
        self.queue_name = queue.name
        self._runner = HandlerRunner(handler, prefetch, queue.name)
        self._channel = _Channel(broker, prefetch)
        self._tasks: set[asyncio.Task[None]] = set()
        self._cancelled = False
        self._pump_task = asyncio.create_task(self._pump())

    async def _pump(self) -> None:
        slots = self._channel.slots
        assert slots is not None
        while True:
            await slots.acquire()
            try:
                stored = await self._queue.take()
            except BaseException:
                slots.release()
                raise
            delivery = MemoryDelivery(self._queue, stored, self._channel)
            task = asyncio.create_task(self._runner.run(delivery))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def cancel(self, *, timeout: float = 10.0) -> None:
        if self._cancelled:
            return
        self._cancelled = True
        self._runner.stop()
        self._pump_task.cancel()
        await asyncio.gather(self._pump_task, return_exceptions=True)
        await self._runner.drain(timeout)
        self._channel.close()
        self._broker._forget(self)


class MemoryBroker(Broker):
    """RabbitMQ's queue semantics inside one asyncio loop."""

    def __init__(self, names: Names, *, delivery_limit: int = DEFAULT_DELIVERY_LIMIT) -> None:
        if delivery_limit < 1:
            raise ConfigurationError(f"delivery_limit must be at least 1, got {delivery_limit}")
        self.names = names
        self.delivery_limit = delivery_limit
        self._queues: dict[str, _MemoryQueue] = {}
        self._consumers: set[MemoryConsumer] = set()
        self._get_channel: _Channel | None = None

    # --- lifecycle -----------------------------------------------------------------

    async def connect(self) -> None:
        if self._get_channel is None:
            self._get_channel = _Channel(self, None)
        self._declare(self.names.dead_queue, dead_letters=False)
        self._declare(self.names.runs_queue, dead_letters=True)
        self._declare(self.names.step_queue(), dead_letters=True)

    async def close(self) -> None:
        for consumer in list(self._consumers):
            await consumer.cancel()
        if self._get_channel is not None:
            self._get_channel.close()
            self._get_channel = None

    def _forget(self, consumer: MemoryConsumer) -> None:
        self._consumers.discard(consumer)

    def _require(self) -> _Channel:
        if self._get_channel is None:
            raise BrokerError("the in-memory broker is not connected; call connect() first")
        return self._get_channel

    def _declare(self, name: str, *, dead_letters: bool) -> None:
        if name not in self._queues:
            self._queues[name] = _MemoryQueue(name, dead_letters=dead_letters)

    def _queue(self, name: str) -> _MemoryQueue:
        self._require()
        queue = self._queues.get(name)
        if queue is None:
            raise BrokerError(f"queue {name!r} does not exist; declare it first")
        return queue

    async def declare_step_queue(self, queue: str = DEFAULT_STEP_QUEUE) -> str:
        self._require()
        full = self.names.step_queue(queue)
        self._declare(full, dead_letters=True)
        return full

    # --- what RabbitMQ does to returned and rejected messages -----------------------

    def _return(self, queue: _MemoryQueue, stored: _Stored) -> None:
        stored.returns += 1
        if queue.dead_letters and stored.returns > self.delivery_limit:
            self._to_dead(queue, stored, DELIVERY_LIMIT_REASON)
        else:
            queue.put(stored, front=True)

    def _reject(self, queue: _MemoryQueue, stored: _Stored) -> None:
        if queue.dead_letters:
            self._to_dead(queue, stored, REJECTED_REASON)

    def _to_dead(self, queue: _MemoryQueue, stored: _Stored, reason: str) -> None:
        headers = {k: v for k, v in stored.headers.items() if k not in BROKER_OWNED_HEADERS}
        headers[REASON_HEADER] = reason
        headers[QUEUE_HEADER] = queue.name
        headers[DEAD_AT_HEADER] = int(time.time() * 1000)
        self._queues[self.names.dead_queue].put(
            _Stored(stored.body, headers, stored.message_id, published_ms=stored.published_ms)
        )

    # --- publishing and consuming ---------------------------------------------------

    async def _publish_one(self, out: Outgoing) -> None:
        self._require()
        queue = self._queues.get(out.queue)
        if queue is None:
            raise PublishError(
                f"message {out.message_id!r} is unroutable: no queue {out.queue!r} "
                f"is bound to exchange {self.names.exchange!r}"
            )
        headers = {k: v for k, v in (out.headers or {}).items() if k not in BROKER_OWNED_HEADERS}
        queue.put(_Stored(out.body, headers, out.message_id, published_ms=int(time.time() * 1000)))
        await asyncio.sleep(0)  # a publish is a suspension point on RabbitMQ too

    async def consume(self, queue: str, handler: Handler, *, prefetch: int) -> Consumer:
        consumer = MemoryConsumer(self, self._queue(queue), handler, prefetch)
        self._consumers.add(consumer)
        return consumer

    async def get(self, queue: str, *, timeout: float = 0.0) -> Delivery | None:
        source = self._queue(queue)
        channel = self._require()
        if source.ready:
            stored = source.ready.popleft()
        elif timeout <= 0:
            return None
        else:
            try:
                stored = await asyncio.wait_for(source.take(), timeout)
            except TimeoutError:
                return None
        return MemoryDelivery(source, stored, channel)

    async def queue_depth(self, queue: str) -> int:
        return len(self._queue(queue).ready)

    async def purge(self, queue: str) -> int:
        source = self._queue(queue)
        count = len(source.ready)
        source.ready.clear()
        return count

    async def queue_info(self, queue: str) -> QueueInfo:
        source = self._queue(queue)
        consumers = sum(1 for c in self._consumers if c.queue_name == queue)
        return QueueInfo(queue, len(source.ready), consumers)

    @contextlib.asynccontextmanager
    async def _hold_dead_letters(self, limit: int) -> AsyncIterator[HeldDeadLetters]:
        """Hand out up to ``limit`` dead letters on a channel of their own; closing it returns
        the unsettled ones to the head in their original order.

        Only the ``limit`` handed out are taken: here returns go to the head, so
        a prefix comes back in place (RabbitMQ 3.10 returns a basic.get message
        to the tail, which is why ``RabbitBroker`` takes the whole queue).
        """
        source = self._queue(self.names.dead_queue)
        channel = _Channel(self, None)
        held: list[Delivery] = []
        depth = len(source.ready)
        while len(held) < limit and source.ready:
            held.append(MemoryDelivery(source, source.ready.popleft(), channel))
        try:
            yield HeldDeadLetters(held, depth=depth)
        finally:
            channel.close()
