"""``Broker.peek_dead``: browsing the dead queue leaves it exactly as it was.

On RabbitMQ the check is the point: the queue is a quorum queue, where a
get-then-requeue would raise every message's delivery count, so after looking
the messages must still be there, in order, with no delivery counted.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from broker import (
    DEAD_AT_HEADER,
    QUEUE_HEADER,
    REASON_HEADER,
    Broker,
    MemoryBroker,
    RabbitBroker,
)
from eventlog.names import Names
from tests.servers import Servers


@pytest.fixture
async def rabbit(
    servers: Servers, names: Names, amqp_cleanup: list[str]
) -> AsyncIterator[RabbitBroker]:
    broker = RabbitBroker(servers.amqp_url, names)
    await broker.connect()
    yield broker
    await asyncio.wait_for(broker.close(), 10)


@pytest.fixture
async def memory(names: Names) -> AsyncIterator[MemoryBroker]:
    broker = MemoryBroker(names)
    await broker.connect()
    yield broker
    await broker.close()


async def _park(broker: Broker, count: int) -> list[str]:
    ids = [f"dead-{i}" for i in range(count)]
    for i, message_id in enumerate(ids):
        headers = {REASON_HEADER: f"reason {i}", QUEUE_HEADER: "q.src", DEAD_AT_HEADER: 1000 + i}
        await broker.publish(
            broker.names.dead_queue, f"body {i}".encode(), headers=headers, message_id=message_id
        )
    return ids


async def _check_peek_leaves_queue_alone(broker: Broker) -> None:
    ids = await _park(broker, 5)
    first = await broker.peek_dead(limit=2)
    assert [m.message_id for m in first] == ids[:2]
    assert [m.body for m in first] == [b"body 0", b"body 1"]
    assert (first[1].reason, first[1].queue, first[1].dead_at_ms) == ("reason 1", "q.src", 1001)
    for _ in range(3):  # looking again and again changes nothing
        again = await broker.peek_dead(limit=100)
        assert [m.message_id for m in again] == ids
    assert await broker.queue_depth(broker.names.dead_queue) == 5

    taken = []
    for _ in range(5):
        delivery = await broker.get(broker.names.dead_queue, timeout=5)
        assert delivery is not None
        taken.append(delivery)
    assert [d.message_id for d in taken] == ids, "peeking reordered the dead queue"
    assert [d.delivery_count for d in taken] == [1] * 5, "peeking burnt delivery attempts"
    assert [d.headers.get(REASON_HEADER) for d in taken] == [f"reason {i}" for i in range(5)]
    for delivery in taken:
        await delivery.ack()
    assert await broker.peek_dead() == []


async def test_peek_dead_leaves_the_rabbitmq_dead_queue_alone(rabbit: RabbitBroker) -> None:
    await _check_peek_leaves_queue_alone(rabbit)


async def test_peek_dead_leaves_the_memory_dead_queue_alone(memory: MemoryBroker) -> None:
    await _check_peek_leaves_queue_alone(memory)


async def test_concurrent_peeks_do_not_reorder(rabbit: RabbitBroker) -> None:
    ids = await _park(rabbit, 8)
    results = await asyncio.gather(*(rabbit.peek_dead(limit=100) for _ in range(4)))
    for seen in results:
        assert [m.message_id for m in seen] == ids
    assert [m.message_id for m in await rabbit.peek_dead()] == ids


async def test_negative_limit_is_refused(memory: MemoryBroker) -> None:
    with pytest.raises(ValueError, match="negative"):
        await memory.peek_dead(limit=-1)


async def test_rabbitmqs_own_dead_letters_survive_a_peek(
    servers: Servers, names: Names, amqp_cleanup: list[str]
) -> None:
    """A message RabbitMQ dead-lettered itself (delivery limit) keeps its x-death headers."""
    from ledgerflow.dashboard.queries import dead_letters

    broker = RabbitBroker(servers.amqp_url, names, delivery_limit=1)
    await broker.connect()
    try:
        await broker.publish(names.runs_queue, b"poison", message_id="poison-1")
        for _ in range(2):
            delivery = await broker.get(names.runs_queue, timeout=10)
            assert delivery is not None
            await delivery.nack(requeue=True)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while await broker.queue_depth(names.dead_queue) < 1:
            assert loop.time() < deadline, "RabbitMQ did not dead-letter the message"
            await asyncio.sleep(0.05)

        for _ in range(2):
            [seen] = await broker.peek_dead()
            assert (seen.message_id, seen.body) == ("poison-1", b"poison")
            assert seen.headers["x-death"][0]["reason"] == "delivery_limit"
        view = await dead_letters(broker)
        [shown] = view["messages"]
        assert shown["reason"] == "delivery_limit (by RabbitMQ)"
        assert shown["queue"] == names.runs_queue
        assert isinstance(shown["dead_at_ms"], int)

        dead = await broker.get(names.dead_queue, timeout=10)
        assert dead is not None
        assert dead.delivery_count == 1
        assert dead.headers["x-first-death-reason"] == "delivery_limit"
        await dead.ack()
    finally:
        await asyncio.wait_for(broker.close(), 10)
