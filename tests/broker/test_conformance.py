"""One behavioural suite that both brokers must pass: in-memory and real RabbitMQ.

The in-memory broker exists so that fast tests and the embedded mode behave like
production; this suite is what keeps that promise honest. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from ledgerflow.broker import (
    DEAD_AT_HEADER,
    EARLIER_DELIVERIES_HEADER,
    QUEUE_HEADER,
    REASON_HEADER,
    Activation,
    Broker,
    Delivery,
    MemoryBroker,
    RabbitBroker,
    StepBatch,
    StepMessage,
    decode_message,
)
from ledgerflow.broker.base import Outgoing
from ledgerflow.broker.topology import MAX_MESSAGE_BYTES
from ledgerflow.eventlog.errors import BrokerError, PayloadTooLargeError, PublishError
from ledgerflow.eventlog.names import Names
from ledgerflow.eventlog.text import MAX_REASON

WAIT = 10.0  # upper bound for anything that should happen promptly


@dataclass
class Factory:
    """Makes brokers of one kind on the test's namespace and closes them afterwards."""

    kind: str
    names: Names
    amqp_url: str = ""
    extra_queues: list[str] = field(default_factory=list)
    made: list[Broker] = field(default_factory=list)

    async def make(self, *, delivery_limit: int = 20) -> Broker:
        broker: Broker
        if self.kind == "memory":
            broker = MemoryBroker(self.names, delivery_limit=delivery_limit)
        else:
            broker = RabbitBroker(self.amqp_url, self.names, delivery_limit=delivery_limit)
        await broker.connect()
        self.made.append(broker)
        return broker

    async def another_client(self, broker: Broker) -> Broker:
        """Another client of the same server: a new connection on RabbitMQ.

        The in-memory broker owns its queues like a server does, so "another
        client" is the same object connected (again).
        """
        if isinstance(broker, MemoryBroker):
            await broker.connect()
            return broker
        return await self.make(delivery_limit=broker.delivery_limit)

    def track(self, full_queue: str) -> str:
        """Delete this extra queue after the test (RabbitMQ only keeps what it is told)."""
        self.extra_queues.append(full_queue)
        return full_queue


@pytest.fixture(
    params=["memory", pytest.param("rabbitmq", marks=pytest.mark.integration)],
)
def factory_kind(request: pytest.FixtureRequest, names: Names) -> Factory:
    """Synchronous so it may pull the server fixtures only for RabbitMQ."""
    if request.param == "memory":
        return Factory("memory", names)
    servers = request.getfixturevalue("servers")
    cleanup: list[str] = request.getfixturevalue("amqp_cleanup")
    return Factory("rabbitmq", names, servers.amqp_url, extra_queues=cleanup)


@pytest.fixture
async def factory(factory_kind: Factory) -> AsyncIterator[Factory]:
    yield factory_kind
    for made in factory_kind.made:  # before amqp_cleanup deletes the queues
        await asyncio.wait_for(made.close(), WAIT)


@pytest.fixture
async def broker(factory: Factory) -> Broker:
    return await factory.make()


class Recorder:
    """A handler that records deliveries and settles them according to a policy."""

    def __init__(self, policy: Callable[[Delivery], Awaitable[None]] | None = None) -> None:
        self.deliveries: list[Delivery] = []
        self._policy = policy
        self._changed = asyncio.Event()

    async def __call__(self, delivery: Delivery) -> None:
        self.deliveries.append(delivery)
        self._changed.set()
        if self._policy is not None:
            await self._policy(delivery)

    async def wait_for(self, count: int, timeout: float = WAIT) -> list[Delivery]:
        async def reached() -> None:
            while len(self.deliveries) < count:
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(reached(), timeout)
        return self.deliveries


async def _ack(delivery: Delivery) -> None:
    await delivery.ack()


async def _ignore(delivery: Delivery) -> None:
    """Leave the delivery unsettled, as a worker that crashed mid-step would."""


# --- lifecycle and topology --------------------------------------------------------------


async def test_connect_twice_is_idempotent(factory: Factory, names: Names) -> None:
    first = await factory.make()
    await first.connect()
    second = await factory.another_client(first)  # declares the topology again
    assert await first.declare_step_queue() == names.step_queue()
    assert await second.declare_step_queue("default") == names.step_queue()
    for queue in (names.runs_queue, names.dead_queue, names.step_queue()):
        assert await second.queue_depth(queue) == 0
    await first.publish(names.runs_queue, b"still works")
    got = await second.get(names.runs_queue, timeout=WAIT)
    assert got is not None and got.body == b"still works"
    await got.ack()


async def test_declare_step_queue_returns_full_name_and_is_cached(
    factory: Factory, broker: Broker, names: Names
) -> None:
    full = factory.track(names.step_queue("emails"))
    assert await broker.declare_step_queue("emails") == full
    assert await broker.declare_step_queue("emails") == full
    assert await broker.queue_depth(full) == 0


async def test_operations_before_connect_fail_clearly(factory: Factory, names: Names) -> None:
    fresh: Broker = (
        MemoryBroker(names) if factory.kind == "memory" else RabbitBroker(factory.amqp_url, names)
    )
    with pytest.raises(BrokerError, match="not connected"):
        await fresh.publish(names.runs_queue, b"x")


async def test_unknown_queue_is_a_broker_error(broker: Broker, names: Names) -> None:
    missing = names.step_queue("never-declared")
    with pytest.raises(BrokerError, match="does not exist"):
        await broker.queue_depth(missing)
    with pytest.raises(BrokerError, match="does not exist"):
        await broker.consume(missing, Recorder(), prefetch=1)
    with pytest.raises(BrokerError, match="does not exist"):
        await broker.get(missing)
    # The failures above must not have broken the broker.
    await broker.publish(names.runs_queue, b"ok")
    assert await broker.queue_depth(names.runs_queue) == 1


# --- publish, consume, ack ---------------------------------------------------------------


async def test_publish_consume_ack(broker: Broker, names: Names) -> None:
    queue = names.step_queue()
    await broker.publish(queue, b"hello", headers={"trace": "abc", "n": 7}, message_id="m-1")
    recorder = Recorder(_ack)
    consumer = await broker.consume(queue, recorder, prefetch=1)
    [delivery] = await recorder.wait_for(1)
    assert delivery.body == b"hello"
    assert delivery.headers["trace"] == "abc" and delivery.headers["n"] == 7
    assert delivery.queue == queue
    assert delivery.message_id == "m-1"
    assert delivery.redelivered is False
    assert delivery.delivery_count == 1
    await asyncio.sleep(0.2)  # an acked message must not come back
    await consumer.cancel()
    assert len(recorder.deliveries) == 1
    assert await broker.get(queue, timeout=0.3) is None
    assert await broker.queue_depth(queue) == 0


async def test_settling_twice_is_an_error(broker: Broker, names: Names) -> None:
    await broker.publish(names.runs_queue, b"once")
    delivery = await broker.get(names.runs_queue, timeout=WAIT)
    assert delivery is not None
    await delivery.ack()
    assert delivery.settled
    with pytest.raises(BrokerError, match="already acked or nacked"):
        await delivery.nack()


async def test_nack_redelivers_with_higher_count(broker: Broker, names: Names) -> None:
    queue = names.step_queue()
    await broker.publish(queue, b"again")

    async def nack_first(delivery: Delivery) -> None:
        if delivery.delivery_count == 1:
            await delivery.nack(requeue=True)
        else:
            await delivery.ack()

    recorder = Recorder(nack_first)
    await broker.consume(queue, recorder, prefetch=1)
    first, second = await recorder.wait_for(2)
    assert (first.body, second.body) == (b"again", b"again")
    assert (first.redelivered, first.delivery_count) == (False, 1)
    assert (second.redelivered, second.delivery_count) == (True, 2)
    await asyncio.sleep(0.2)
    assert len(recorder.deliveries) == 2


async def test_hand_back_is_not_a_delivery_and_keeps_earlier_ones(
    broker: Broker, names: Names
) -> None:
    """A handed-back copy keeps body, headers and id, and the deliveries the original had."""
    queue = names.step_queue()
    await broker.publish(queue, b"wait", headers={"trace": "t"}, message_id="m-hb")
    first = await broker.get(queue, timeout=WAIT)
    assert first is not None
    await first.nack(requeue=True)  # a real redelivery: counts
    second = await broker.get(queue, timeout=WAIT)
    assert second is not None and second.delivery_count == 2
    await broker.hand_back(second)  # waiting for a slot: must not count
    assert second.settled
    copy = await broker.get(queue, timeout=WAIT)
    assert copy is not None
    assert (copy.body, copy.message_id, copy.headers["trace"]) == (b"wait", "m-hb", "t")
    assert copy.delivery_count == 1 and copy.deliveries_before == 1
    await broker.hand_back(copy)
    again = await broker.get(queue, timeout=WAIT)
    assert again is not None and again.deliveries_before == 1
    await again.ack()
    assert await broker.get(queue, timeout=0.3) is None


@pytest.mark.parametrize("carried", ["7", -3, True, 10**9, None, 2.5])
async def test_a_hostile_earlier_deliveries_header_is_bounded(
    broker: Broker, names: Names, carried: object
) -> None:
    queue = names.step_queue()
    headers = {EARLIER_DELIVERIES_HEADER: carried} if carried is not None else {}
    await broker.publish(queue, b"x", headers=headers)
    delivery = await broker.get(queue, timeout=WAIT)
    assert delivery is not None
    expected = 1000 if carried == 10**9 else 0
    assert delivery.deliveries_before == expected
    await delivery.ack()


async def test_handler_exception_redelivers(broker: Broker, names: Names) -> None:
    queue = names.runs_queue

    async def fail_first(delivery: Delivery) -> None:
        if delivery.delivery_count == 1:
            raise RuntimeError("handler bug")
        await delivery.ack()

    recorder = Recorder(fail_first)
    await broker.consume(queue, recorder, prefetch=1)
    await broker.publish(queue, b"fragile")
    first, second = await recorder.wait_for(2)
    assert first.settled  # the runner nacked it on the handler's behalf
    assert second.body == b"fragile"
    assert (second.redelivered, second.delivery_count) == (True, 2)


async def test_unacked_message_returns_when_consumer_cancels(broker: Broker, names: Names) -> None:
    queue = names.step_queue()
    await broker.publish(queue, b"orphan", message_id="o-1")
    recorder = Recorder(_ignore)
    consumer = await broker.consume(queue, recorder, prefetch=1)
    [held] = await recorder.wait_for(1)
    await asyncio.wait_for(consumer.cancel(), WAIT)
    again = await broker.get(queue, timeout=WAIT)
    assert again is not None
    assert (again.body, again.message_id) == (b"orphan", "o-1")
    assert (again.redelivered, again.delivery_count) == (True, 2)
    await again.ack()
    with pytest.raises(BrokerError):  # the old delivery's channel is gone
        await held.ack()


async def test_unacked_message_returns_after_broker_closes(
    factory: Factory, broker: Broker, names: Names
) -> None:
    queue = names.step_queue()
    await broker.publish(queue, b"crash")
    recorder = Recorder(_ignore)
    await broker.consume(queue, recorder, prefetch=1)
    await recorder.wait_for(1)
    await asyncio.wait_for(broker.close(), WAIT)

    reopened = await factory.another_client(broker)
    second = Recorder(_ack)
    await reopened.consume(queue, second, prefetch=1)
    [delivery] = await second.wait_for(1)
    assert delivery.body == b"crash"
    assert (delivery.redelivered, delivery.delivery_count) == (True, 2)


async def test_prefetch_bounds_concurrent_handlers(broker: Broker, names: Names) -> None:
    queue = names.step_queue()
    in_flight = 0
    peak = 0
    done = asyncio.Event()
    handled: list[bytes] = []

    async def slow(delivery: Delivery) -> None:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.1)
        in_flight -= 1
        handled.append(delivery.body)
        await delivery.ack()
        if len(handled) == 6:
            done.set()

    await broker.publish_many([(queue, str(i).encode()) for i in range(6)])
    await broker.consume(queue, slow, prefetch=2)
    await asyncio.wait_for(done.wait(), WAIT)
    assert peak == 2
    assert sorted(handled) == [str(i).encode() for i in range(6)]


async def test_prefetch_is_per_consumer_at_the_broker(broker: Broker, names: Names) -> None:
    """A consumer holding its one prefetched message must leave the next to another."""
    queue = names.step_queue()
    release = asyncio.Event()

    async def hold(delivery: Delivery) -> None:
        await release.wait()
        await delivery.ack()

    holder = Recorder(hold)
    await broker.consume(queue, holder, prefetch=1)
    try:
        await broker.publish(queue, b"first")
        await holder.wait_for(1)
        other = Recorder(_ack)
        await broker.consume(queue, other, prefetch=1)
        await broker.publish(queue, b"second")
        [got] = await other.wait_for(1)
        assert got.body == b"second"
        assert len(holder.deliveries) == 1
    finally:
        release.set()


async def test_prefetch_bounds_handlers_that_ack_early(broker: Broker, names: Names) -> None:
    """Acking first frees the broker's prefetch slot, not the handler's concurrency slot."""
    queue = names.step_queue()
    in_flight = 0
    peak = 0
    finished: list[bytes] = []
    done = asyncio.Event()

    async def ack_then_work(delivery: Delivery) -> None:
        nonlocal in_flight, peak
        await delivery.ack()
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.1)
        in_flight -= 1
        finished.append(delivery.body)
        if len(finished) == 6:
            done.set()

    await broker.publish_many([(queue, str(i).encode()) for i in range(6)])
    await broker.consume(queue, ack_then_work, prefetch=2)
    await asyncio.wait_for(done.wait(), WAIT)
    assert peak == 2


# --- dead letters ------------------------------------------------------------------------


async def test_dead_letter_moves_message_with_reason(broker: Broker, names: Names) -> None:
    queue = names.step_queue()
    await broker.publish(queue, b"poison", headers={"trace": "t-9"}, message_id="p-1")
    first = await broker.get(queue, timeout=WAIT)
    assert first is not None
    await first.nack(requeue=True)
    delivery = await broker.get(queue, timeout=WAIT)
    assert delivery is not None and delivery.delivery_count == 2
    before = int(time.time() * 1000)
    await broker.dead_letter(delivery, "cannot decode arguments")
    after = int(time.time() * 1000)
    assert delivery.settled

    dead = await broker.get(names.dead_queue, timeout=WAIT)
    assert dead is not None
    assert dead.body == b"poison"
    assert dead.message_id == "p-1"
    assert dead.headers[REASON_HEADER] == "cannot decode arguments"
    assert dead.headers[QUEUE_HEADER] == queue
    assert before <= dead.headers[DEAD_AT_HEADER] <= after
    assert dead.headers["trace"] == "t-9"
    assert dead.delivery_count == 1  # a fresh message there, not the source's count
    await dead.ack()
    assert await broker.get(queue, timeout=0.3) is None
    assert await broker.queue_depth(names.dead_queue) == 0


async def test_nack_without_requeue_dead_letters(broker: Broker, names: Names) -> None:
    queue = names.runs_queue
    await broker.publish(queue, b"reject me")
    delivery = await broker.get(queue, timeout=WAIT)
    assert delivery is not None
    await delivery.nack(requeue=False)
    dead = await broker.get(names.dead_queue, timeout=WAIT)
    assert dead is not None and dead.body == b"reject me"
    assert "rejected" in (
        dead.headers.get(REASON_HEADER),
        dead.headers.get("x-first-death-reason"),
    )
    await dead.ack()


async def test_delivery_limit_dead_letters(factory: Factory, names: Names) -> None:
    broker = await factory.make(delivery_limit=2)
    queue = names.step_queue()
    counts: list[int] = []

    async def always_nack(delivery: Delivery) -> None:
        counts.append(delivery.delivery_count)
        await delivery.nack(requeue=True)

    await broker.consume(queue, always_nack, prefetch=1)
    started = time.monotonic()
    await broker.publish(queue, b"doomed", headers={"trace": "d-1"})
    dead = await broker.get(names.dead_queue, timeout=WAIT)
    elapsed = time.monotonic() - started
    assert dead is not None, "the message never reached the dead queue"
    assert dead.body == b"doomed"
    assert dead.headers["trace"] == "d-1"
    # RabbitMQ allows `limit` redeliveries: the first delivery plus two, then dead-letters.
    assert counts == [1, 2, 3]
    assert elapsed < 5.0
    reason = dead.headers.get(REASON_HEADER) or dead.headers.get("x-first-death-reason")
    assert reason in ("delivery limit exceeded", "delivery_limit")
    await dead.ack()
    assert await broker.queue_depth(queue) == 0


async def test_delivery_limit_counts_consumer_loss(factory: Factory, names: Names) -> None:
    """A message whose consumers keep dying is dead-lettered too (a crash is a failed try)."""
    broker = await factory.make(delivery_limit=1)
    queue = names.step_queue()
    await broker.publish(queue, b"crashes workers")
    for expected in (1, 2):
        recorder = Recorder(_ignore)
        consumer = await broker.consume(queue, recorder, prefetch=1)
        [delivery] = await recorder.wait_for(1)
        assert delivery.delivery_count == expected
        await consumer.cancel()
    dead = await broker.get(names.dead_queue, timeout=WAIT)
    assert dead is not None and dead.body == b"crashes workers"
    await dead.ack()


# --- publishing --------------------------------------------------------------------------


async def test_publish_to_unknown_queue_raises(broker: Broker, names: Names) -> None:
    with pytest.raises(PublishError, match="unroutable"):
        await broker.publish(names.step_queue("nobody-home"), b"lost?")
    # The broker stays usable after a returned message.
    await broker.publish(names.runs_queue, b"fine")
    assert await broker.queue_depth(names.runs_queue) == 1


async def test_publish_many_reports_partial_failure(broker: Broker, names: Names) -> None:
    good = names.runs_queue
    items = [(good, b"a"), (names.step_queue("nobody-home"), b"b"), (good, b"c")]
    with pytest.raises(PublishError, match="1 of 3 messages were not confirmed"):
        await broker.publish_many(items)
    assert await broker.queue_depth(good) == 2


async def test_publish_many_500_all_arrive(broker: Broker, names: Names) -> None:
    queue = names.step_queue()
    bodies = {f"msg-{i}".encode() for i in range(500)}
    started = time.monotonic()
    await asyncio.wait_for(broker.publish_many([(queue, b) for b in sorted(bodies)]), WAIT)
    publish_seconds = time.monotonic() - started
    assert await broker.queue_depth(queue) == 500
    received: set[bytes] = set()
    done = asyncio.Event()

    async def collect(delivery: Delivery) -> None:
        received.add(delivery.body)
        await delivery.ack()
        if len(received) == 500:
            done.set()

    await broker.consume(queue, collect, prefetch=50)
    await asyncio.wait_for(done.wait(), WAIT)
    assert received == bodies
    assert publish_seconds < 5.0


async def test_same_message_id_in_flight_twice(broker: Broker, names: Names) -> None:
    """Two publishes with one id at once must each get their own confirm or return."""
    missing = names.step_queue("nobody-home")
    results = await asyncio.gather(
        broker.publish(missing, b"1", message_id="dup"),
        broker.publish(missing, b"2", message_id="dup"),
        return_exceptions=True,
    )
    assert all(isinstance(r, PublishError) for r in results), results


async def test_typed_messages_round_trip(factory: Factory, broker: Broker, names: Names) -> None:
    emails = factory.track(names.step_queue("emails"))
    step = StepMessage("run-7", "s2", "send_email", 3, b"\x01\x02", queue="emails")
    await broker.publish_step(step)
    batch = [
        StepMessage("run-8", f"s{i}", "fan_out", 1, b"", queue=q)
        for i, q in enumerate(["default", "emails", "default"])
    ]
    await broker.publish_steps(batch)
    await broker.publish_activation(Activation("run-7", reason="step s1 completed"))

    async def drain(queue: str) -> list[Any]:
        messages: list[Any] = []
        while (delivery := await broker.get(queue, timeout=0.5)) is not None:
            messages.append((decode_message(delivery.body), delivery.message_id))
            await delivery.ack()
        return messages

    assert await drain(emails) == [(step, "run-7:s2:3"), (batch[1], "run-8:s1:1")]
    # Steps of one run for one queue travel together; a lone one stays a plain step.
    packed = StepBatch((batch[0], batch[2]))
    assert await drain(names.step_queue()) == [(packed, "run-8:s0..s2:1")]
    [(activation, _)] = await drain(names.runs_queue)
    assert activation == Activation("run-7", reason="step s1 completed")


async def test_a_body_over_the_message_limit_is_refused_before_sending(
    broker: Broker, names: Names
) -> None:
    queue = names.runs_queue
    with pytest.raises(PayloadTooLargeError, match=f"over the {MAX_MESSAGE_BYTES}-byte"):
        await broker.publish(queue, b"\0" * (MAX_MESSAGE_BYTES + 1))
    with pytest.raises(PayloadTooLargeError):
        await broker.publish_many([(queue, b"ok"), (queue, b"\0" * (MAX_MESSAGE_BYTES + 1))])
    assert await broker.queue_depth(queue) == 0  # not even the small one of the batch


async def test_steps_are_batched_within_the_message_limit(broker: Broker, names: Names) -> None:
    """Each step may carry up to its max_payload: a batch holds only as many as fit."""
    args = b"\0" * (1024 * 1024)
    steps = [StepMessage("run-big", f"s{i}", "upload", 1, args, "default") for i in range(12)]
    await broker.publish_steps(steps)
    received: list[StepMessage] = []
    while (delivery := await broker.get(names.step_queue(), timeout=2)) is not None:
        assert len(delivery.body) <= MAX_MESSAGE_BYTES
        message = decode_message(delivery.body)
        received += message.steps if isinstance(message, StepBatch) else [message]
        await delivery.ack()
    assert received == steps


async def test_an_oversized_delivery_is_dead_lettered_as_it_came(
    broker: Broker, names: Names
) -> None:
    """The broker accepted it once: dead-lettering must not refuse it and leave it nowhere."""
    queue = names.runs_queue
    huge = b"\0" * (MAX_MESSAGE_BYTES + 10)
    await broker._publish_one(Outgoing(queue, huge, None, "huge"))  # as another producer would
    delivery = await broker.get(queue, timeout=WAIT)
    assert delivery is not None
    await broker.dead_letter(delivery, "x" * 5000)
    dead = await broker.get(names.dead_queue, timeout=WAIT)
    assert dead is not None
    assert dead.body == huge
    assert len(dead.headers[REASON_HEADER]) <= MAX_REASON
    await dead.ack()


async def test_queue_depth_and_purge(broker: Broker, names: Names) -> None:
    queue = names.runs_queue
    assert await broker.queue_depth(queue) == 0
    await broker.publish_many([(queue, b"x")] * 3)
    assert await broker.queue_depth(queue) == 3
    assert await broker.purge(queue) == 3
    assert await broker.queue_depth(queue) == 0
    assert await broker.purge(queue) == 0
    assert await broker.get(queue, timeout=0.2) is None
