"""A consumer channel RabbitMQ closes on its own is noticed and consumes again (issue 11, item 10).

RabbitMQ closes a channel for a consumer timeout (see
tests/integration/test_long_steps.py) or any other channel error; here the
error is an ack of a delivery tag the server never sent, which closes the
channel at once with PRECONDITION_FAILED.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from ledgerflow.broker import Delivery, RabbitBroker
from ledgerflow.broker.rabbitmq import RabbitConsumer
from ledgerflow.eventlog.names import Names
from structlog.testing import capture_logs

from tests.servers import Servers

WAIT = 15.0
CLOSED = "consumer channel closed; it will be reopened"


@pytest.fixture
async def rabbit(
    servers: Servers, names: Names, amqp_cleanup: list[str]
) -> AsyncIterator[RabbitBroker]:
    broker = RabbitBroker(servers.amqp_url, names, reconnect_interval=0.2)
    await broker.connect()
    yield broker
    await asyncio.wait_for(broker.close(), WAIT)


async def consuming(
    rabbit: RabbitBroker, queue: str
) -> tuple[RabbitConsumer, asyncio.Queue[bytes]]:
    seen: asyncio.Queue[bytes] = asyncio.Queue()

    async def handler(delivery: Delivery) -> None:
        await delivery.ack()
        seen.put_nowait(delivery.body)

    consumer = await rabbit.consume(queue, handler, prefetch=4)
    assert isinstance(consumer, RabbitConsumer)
    return consumer, seen


async def close_from_the_server(consumer: RabbitConsumer) -> None:
    channel = consumer._channel
    assert channel is not None
    underlay: Any = await channel.get_underlay_channel()
    with pytest.raises(Exception, match="unknown delivery tag"):
        await underlay.basic_ack(99999)
        await asyncio.wait_for(underlay.closing, WAIT)
        underlay.closing.result()


async def wait_logged(logs: list[dict[str, Any]], event: str) -> dict[str, Any]:
    for _ in range(int(WAIT / 0.05)):
        for line in logs:
            if line["event"] == event:
                return line
        await asyncio.sleep(0.05)
    raise AssertionError(f"never logged {event!r}: {[line['event'] for line in logs]}")


async def test_a_channel_the_server_closes_is_logged_and_reopened(
    rabbit: RabbitBroker, names: Names
) -> None:
    queue = names.runs_queue
    consumer, seen = await consuming(rabbit, queue)
    with capture_logs() as logs:
        await close_from_the_server(consumer)
        closed = await wait_logged(logs, CLOSED)
        await wait_logged(logs, "consumer channel reopened; consuming again")
    assert "unknown delivery tag" in closed["reason"] and closed["queue"] == queue
    await rabbit.publish(queue, b"after")
    assert await asyncio.wait_for(seen.get(), WAIT) == b"after"


async def test_a_channel_aio_pika_fails_to_reopen_is_subscribed_again(
    rabbit: RabbitBroker, names: Names
) -> None:
    queue = names.runs_queue
    consumer, seen = await consuming(rabbit, queue)
    consumer._reopen_wait = 0.5
    channel = consumer._channel
    assert channel is not None

    async def reopen_fails() -> None:
        raise ConnectionError("simulated failure to reopen")

    channel.reopen = reopen_fails  # type: ignore[method-assign]
    with capture_logs() as logs:
        await close_from_the_server(consumer)
        await wait_logged(logs, CLOSED)
        await wait_logged(logs, "consumer channel stayed closed; subscribed again on a new channel")
    assert consumer._channel is not channel and not consumer._channel.is_closed
    await rabbit.publish(queue, b"after")
    assert await asyncio.wait_for(seen.get(), WAIT) == b"after"
    await consumer.cancel(timeout=5)
