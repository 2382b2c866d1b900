"""``Broker.hold_dead_letters``: reading the dead queue loses nothing and keeps its order.

The one way the dead queue is read (``ledgerflow dlq``, ``ledgerflow queues``,
the dashboard). Messages are taken unacked and given back on leaving the block,
so after any number of reads every message must still be there, in order, with
its headers; on RabbitMQ that includes the ``x-death`` record of a message it
dead-lettered itself. A read of fewer messages than the queue holds is the
sharp case: RabbitMQ 3.10 returns a basic.get message to the tail of a quorum
queue, so giving back just a prefix would rotate the queue. Concurrent readers
in one process must take turns, or whichever released first would put its
share back ahead of the other's.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from ledgerflow.broker import (
    DEAD_AT_HEADER,
    QUEUE_HEADER,
    REASON_HEADER,
    Broker,
    MemoryBroker,
    RabbitBroker,
)
from ledgerflow.broker.deadletters import describe
from ledgerflow.eventlog.names import Names

from ledgerflow.dashboard.queries import dead_letters
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


@pytest.fixture(params=["memory", "rabbitmq"])
def broker(request: pytest.FixtureRequest) -> Broker:
    """Each test against both brokers: the in-memory one must behave as RabbitMQ does."""
    chosen: Broker = request.getfixturevalue("memory" if request.param == "memory" else "rabbit")
    return chosen


async def _park(broker: Broker, count: int) -> list[str]:
    ids = [f"dead-{i}" for i in range(count)]
    for i, message_id in enumerate(ids):
        headers = {REASON_HEADER: f"reason {i}", QUEUE_HEADER: "q.src", DEAD_AT_HEADER: 1000 + i}
        await broker.publish(
            broker.names.dead_queue, f"body {i}".encode(), headers=headers, message_id=message_id
        )
    return ids


async def _read_ids(broker: Broker, limit: int = 100) -> list[str | None]:
    async with broker.hold_dead_letters(limit) as held:
        return [d.message_id for d in held]


async def _take_all(broker: Broker, count: int) -> list[str | None]:
    """Drain the dead queue for good, checking each message kept its body and headers."""
    ids: list[str | None] = []
    for i in range(count):
        delivery = await broker.get(broker.names.dead_queue, timeout=5)
        assert delivery is not None, f"message {i} of {count} is gone"
        assert delivery.body == f"body {i}".encode()
        assert delivery.headers.get(REASON_HEADER) == f"reason {i}"
        ids.append(delivery.message_id)
        await delivery.ack()
    assert await broker.get(broker.names.dead_queue) is None, "a read duplicated a message"
    return ids


async def test_reading_leaves_the_dead_queue_as_it_was(broker: Broker) -> None:
    ids = await _park(broker, 5)
    async with broker.hold_dead_letters(2) as held:
        first = [describe(d) for d in held]
        assert held.depth == 5
    assert [x.id for x in first] == ids[:2]
    assert [x.body for x in first] == [b"body 0", b"body 1"]
    assert (first[1].reason, first[1].queue, first[1].dead_at_ms) == ("reason 1", "q.src", 1001)
    for _ in range(3):  # reading again and again changes nothing
        assert await _read_ids(broker) == ids
    # A quorum queue counts a returned message once Raft has applied the return, a moment
    # after the channel that held it closed: wait for it, briefly, rather than race it.
    deadline = time.monotonic() + 5
    while await broker.queue_depth(broker.names.dead_queue) != 5:
        assert time.monotonic() < deadline, "a read lost a dead letter"
        await asyncio.sleep(0.05)
    assert await _take_all(broker, 5) == ids, "reading reordered the dead queue"
    assert await _read_ids(broker) == []


async def test_an_acked_message_goes_and_the_rest_come_back_in_order(broker: Broker) -> None:
    ids = await _park(broker, 4)
    async with broker.hold_dead_letters(3) as held:
        await held[1].ack()  # what a requeue does once its copy is confirmed
    assert await _read_ids(broker) == [ids[0], ids[2], ids[3]]


async def test_zero_reads_nothing_and_negative_is_refused(broker: Broker) -> None:
    ids = await _park(broker, 2)
    async with broker.hold_dead_letters(0) as held:
        assert (list(held), held.depth) == ([], 2)
    with pytest.raises(ValueError, match="negative"):
        async with broker.hold_dead_letters(-1):
            pytest.fail("a negative limit was accepted")
    assert await _read_ids(broker) == ids


async def test_concurrent_readers_do_not_reorder_or_hide_messages(broker: Broker) -> None:
    """Readers that overlap (dashboard requests, a CLI command) each see the whole queue.

    Each reader holds its messages across a suspension point, which is where an
    unserialized second reader would take the rest of the queue and return its
    share first.
    """
    ids = await _park(broker, 8)

    async def reader() -> list[str | None]:
        async with broker.hold_dead_letters(100) as held:
            await asyncio.sleep(0.02)
            return [d.message_id for d in held]

    async def page() -> list[str | None]:
        view = await dead_letters(broker, limit=100)
        assert view["depth"] == len(ids)
        messages = view["messages"]
        assert isinstance(messages, list)
        return [m["message_id"] for m in messages if isinstance(m, dict)]  # type: ignore[misc]

    results = await asyncio.gather(*(reader() for _ in range(4)), page(), reader(), page())
    for seen in results:
        assert seen == ids
    assert await _take_all(broker, 8) == ids


async def test_rabbitmqs_own_dead_letters_survive_a_read(
    servers: Servers, names: Names, amqp_cleanup: list[str]
) -> None:
    """A message RabbitMQ dead-lettered itself (delivery limit) keeps its x-death record."""
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
            async with broker.hold_dead_letters(100) as held:
                [letter] = [describe(d) for d in held]
            assert (letter.id, letter.body) == ("poison-1", b"poison")
            assert (letter.reason, letter.queue) == ("delivery_limit", names.runs_queue)
            assert isinstance(letter.dead_at_ms, int)
            assert letter.headers["x-death"][0]["reason"] == "delivery_limit"
        view = await dead_letters(broker)
        assert view["depth"] == 1
        [shown] = view["messages"]  # type: ignore[misc]
        assert shown["reason"] == "delivery_limit (by RabbitMQ)"
        assert shown["queue"] == names.runs_queue
        assert shown["dead_at_ms"] == letter.dead_at_ms

        dead = await broker.get(names.dead_queue, timeout=10)
        assert dead is not None
        assert (dead.message_id, dead.body) == ("poison-1", b"poison")
        assert dead.headers["x-first-death-reason"] == "delivery_limit"
        assert dead.headers["x-death"][0]["queue"] == names.runs_queue
        await dead.ack()
    finally:
        await asyncio.wait_for(broker.close(), 10)
