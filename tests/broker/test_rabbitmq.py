"""RabbitMQ-only behaviour: reconnects, refused settings, RabbitMQ's own dead-letter headers."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections.abc import AsyncIterator

import pytest
from ledgerflow.broker import Broker, Delivery, RabbitBroker
from ledgerflow.eventlog.errors import ConfigurationError, ServiceUnavailableError
from ledgerflow.eventlog.names import Names

from tests.servers import Servers

WAIT = 10.0


@pytest.fixture
async def rabbit(
    servers: Servers, names: Names, amqp_cleanup: list[str]
) -> AsyncIterator[RabbitBroker]:
    broker = RabbitBroker(servers.amqp_url, names, reconnect_interval=0.2)
    await broker.connect()
    yield broker
    await asyncio.wait_for(broker.close(), WAIT)


def _force_close_connections(connection_name: str) -> int:
    """Have the server drop our connections, as a broker restart would."""
    if shutil.which("rabbitmqctl") is None:
        pytest.skip("rabbitmqctl is not available to force-close a connection")
    listed = subprocess.run(
        ["rabbitmqctl", "-q", "list_connections", "pid", "client_properties"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if listed.returncode != 0:
        pytest.skip(f"rabbitmqctl cannot list connections: {listed.stderr.strip()}")
    pids = [line.split("\t")[0] for line in listed.stdout.splitlines() if connection_name in line]
    for pid in pids:
        subprocess.run(
            ["rabbitmqctl", "-q", "close_connection", pid, "ledgerflow test"],
            capture_output=True,
            timeout=30,
            check=True,
        )
    return len(pids)


async def test_consumer_resumes_after_connection_is_forced_closed(
    rabbit: RabbitBroker, names: Names
) -> None:
    queue = names.runs_queue
    seen: list[tuple[bytes, int]] = []
    arrived = asyncio.Event()

    async def handler(delivery: Delivery) -> None:
        seen.append((delivery.body, delivery.delivery_count))
        arrived.set()
        if delivery.body != b"held" or delivery.delivery_count > 1:
            await delivery.ack()

    await rabbit.consume(queue, handler, prefetch=5)
    await rabbit.publish(queue, b"held")
    await asyncio.wait_for(arrived.wait(), WAIT)

    closed = await asyncio.to_thread(_force_close_connections, f"ledgerflow:{names.namespace}")
    assert closed == 1
    await asyncio.sleep(0.3)  # let the client notice; publishes then wait for the reconnect
    await asyncio.wait_for(rabbit.publish(queue, b"after"), WAIT)

    async def both() -> None:
        while not {(b"held", 2), (b"after", 1)} <= set(seen):
            arrived.clear()
            await arrived.wait()

    await asyncio.wait_for(both(), WAIT)
    assert seen[0] == (b"held", 1)


async def test_mismatched_delivery_limit_is_a_configuration_error(
    rabbit: RabbitBroker, servers: Servers, names: Names
) -> None:
    other = RabbitBroker(servers.amqp_url, names, delivery_limit=7)
    with pytest.raises(ConfigurationError, match="x-delivery-limit"):
        await other.connect()
    await other.close()
    await rabbit.publish(names.runs_queue, b"unaffected")  # the first client is unharmed


async def test_rabbitmq_dead_letters_with_its_own_headers(
    servers: Servers, names: Names, amqp_cleanup: list[str]
) -> None:
    broker: Broker = RabbitBroker(servers.amqp_url, names, delivery_limit=1)
    await broker.connect()
    try:
        await broker.publish(names.runs_queue, b"poison")
        for _ in range(2):
            delivery = await broker.get(names.runs_queue, timeout=WAIT)
            assert delivery is not None
            await delivery.nack(requeue=True)
        dead = await broker.get(names.dead_queue, timeout=WAIT)
        assert dead is not None and dead.body == b"poison"
        assert dead.headers["x-first-death-reason"] == "delivery_limit"
        assert dead.headers["x-first-death-queue"] == names.runs_queue
        assert dead.headers["x-death"][0]["reason"] == "delivery_limit"
        await dead.ack()
    finally:
        await broker.close()


async def test_unreachable_server_is_service_unavailable(names: Names) -> None:
    broker = RabbitBroker("amqp://guest:secret@127.0.0.1:1/", names, timeout=2.0)
    with pytest.raises(ServiceUnavailableError) as info:
        await broker.connect()
    assert "secret" not in str(info.value)
    assert "127.0.0.1:1" in str(info.value)
