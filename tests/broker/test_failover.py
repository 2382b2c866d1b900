"""Failover between the URLs of a list, on the shared RabbitMQ seen through proxies.

Two proxies in front of one server look like two nodes to the client, and a proxy
killed is a node gone (``tests/tcpproxy.py``). The real thing, a 3-node cluster
losing the node a fleet is on, is ``tests/cluster/test_failover.py``; these pin the
client's part cheaply and deterministically: connect skips dead URLs, a lost
connection moves to the next live URL round the list with its consumers and
publisher, and a publish in flight when the node dies is sent again.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import pytest
from ledgerflow.broker import Delivery, RabbitBroker
from ledgerflow.eventlog.errors import PublishError, ServiceUnavailableError
from ledgerflow.eventlog.names import Names
from structlog.testing import capture_logs

from tests.processes import cli
from tests.servers import Servers
from tests.tcpproxy import TcpProxy

pytestmark = pytest.mark.integration

WAIT = 20.0
SECRET = "Zq7-not-for-logs"


def dead_url(password: str = "guest") -> str:
    """A loopback URL nothing listens on (the port was free a moment ago)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"amqp://guest:{password}@127.0.0.1:{port}/"


def port_of(url: str | None) -> int | None:
    return None if url is None else urlsplit(url).port


@pytest.fixture
async def proxies(servers: Servers) -> AsyncIterator[list[TcpProxy]]:
    target = urlsplit(servers.amqp_url)
    made = [
        await TcpProxy(target.hostname or "127.0.0.1", target.port or 5672).start()
        for _ in range(2)
    ]
    yield made
    for proxy in made:
        await proxy.kill()


async def test_connect_skips_a_dead_first_url(
    servers: Servers, names: Names, amqp_cleanup: list[str]
) -> None:
    broker = RabbitBroker(f"{dead_url()},{servers.amqp_url}", names)
    with capture_logs() as logs:
        await broker.connect()
    try:
        assert port_of(broker.connected_url) == urlsplit(servers.amqp_url).port
        await broker.publish(names.runs_queue, b"landed")
        assert await broker.queue_depth(names.runs_queue) == 1
    finally:
        await broker.close()
    [note] = [line for line in logs if line["event"] == "rabbitmq.connected_to_later_node"]
    assert "127.0.0.1" in note["unreachable"]


async def test_every_url_dead_is_one_error_naming_each_redacted(names: Names) -> None:
    first, second = dead_url(SECRET), dead_url(SECRET)
    broker = RabbitBroker(f"{first}, {second}", names, timeout=5.0)
    with pytest.raises(ServiceUnavailableError) as raised:
        await broker.connect()
    text = str(raised.value)
    assert "any of the 2 RabbitMQ nodes" in text
    for url in (first, second):
        assert url.replace(SECRET, "***") in text
    assert SECRET not in text


def test_the_cli_reports_a_dead_cluster_in_one_redacted_line(
    servers: Servers, namespace: str
) -> None:
    urls = f"{dead_url(SECRET)},{dead_url(SECRET)}"
    done = cli(servers, namespace, "queues", env={"LEDGERFLOW_AMQP_URL": urls})
    assert done.returncode == 3, done.stderr
    [line] = done.stderr.strip().splitlines()
    assert "cannot connect to any of the 2 RabbitMQ nodes" in line
    assert SECRET not in done.stderr and "guest:***@127.0.0.1" in line


def test_the_cli_refuses_a_malformed_url_of_the_list(servers: Servers, namespace: str) -> None:
    urls = f"{servers.amqp_url},amqp://guest:{SECRET}@127.0.0.1:99999/"
    done = cli(servers, namespace, "queues", env={"LEDGERFLOW_AMQP_URL": urls})
    assert done.returncode == 2, done.stderr
    assert "RabbitMQ (node 2 of 2) URL" in done.stderr and "port '99999'" in done.stderr
    assert SECRET not in done.stderr


async def test_a_lost_node_moves_consumer_and_publisher_to_the_next_live_url(
    servers: Servers, names: Names, amqp_cleanup: list[str], proxies: list[TcpProxy]
) -> None:
    """Node A dies; the next URL (dead) is skipped; node B takes consumer and publisher."""
    node_a, node_b = proxies
    urls = [node_a.url(), dead_url(), node_b.url()]
    broker = RabbitBroker(urls, names, reconnect_interval=0.2)
    await broker.connect()
    received: asyncio.Queue[bytes] = asyncio.Queue()

    async def handler(delivery: Delivery) -> None:
        await delivery.ack()
        received.put_nowait(delivery.body)

    try:
        consumer = await broker.consume(names.runs_queue, handler, prefetch=4)
        await broker.publish(names.runs_queue, b"before")
        assert await asyncio.wait_for(received.get(), WAIT) == b"before"
        assert port_of(broker.connected_url) == node_a.port

        with capture_logs() as logs:
            await node_a.kill()
            # Published while the connection moves: waits for it, then lands once.
            await asyncio.wait_for(broker.publish(names.runs_queue, b"after"), WAIT)
            assert await asyncio.wait_for(received.get(), WAIT) == b"after"
        assert port_of(broker.connected_url) == node_b.port
        hops = [
            (line["lost"], line["next"]) for line in logs if line["event"] == "rabbitmq.failover"
        ]
        assert [port_of(lost) for lost, _ in hops][:2] == [node_a.port, port_of(urls[1])]
        assert port_of(hops[-1][1]) == node_b.port
        await consumer.cancel()
    finally:
        await broker.close()


@pytest.mark.parametrize(
    ("frozen", "copies"),
    [
        ("to_server", 1),  # the publish never reached RabbitMQ: sent again, it lands once
        ("to_client", 2),  # it landed but its confirm was lost: sent again, it lands twice
    ],
)
async def test_a_publish_in_flight_when_its_node_dies_is_sent_again(
    servers: Servers,
    names: Names,
    amqp_cleanup: list[str],
    proxies: list[TcpProxy],
    frozen: str,
    copies: int,
) -> None:
    node_a, node_b = proxies
    broker = RabbitBroker([node_a.url(), node_b.url()], names, reconnect_interval=0.2)
    await broker.connect()
    try:
        node_a.freeze("to_server" if frozen == "to_server" else "to_client")
        with capture_logs() as logs:
            publishing = asyncio.create_task(
                broker.publish(names.runs_queue, b"in flight", message_id="m-1")
            )
            await asyncio.sleep(0.5)
            assert not publishing.done(), "the confirm cannot have arrived through a frozen node"
            await node_a.kill()
            await asyncio.wait_for(publishing, WAIT)
        assert port_of(broker.connected_url) == node_b.port
        assert any(line["event"] == "rabbitmq.publish_retried" for line in logs), logs
        bodies = []
        while (delivery := await broker.get(names.runs_queue, timeout=2.0)) is not None:
            bodies.append((delivery.body, delivery.message_id))
            await delivery.ack()
        assert bodies == [(b"in flight", "m-1")] * copies
    finally:
        await broker.close()


async def test_a_nacked_publish_is_retried_on_a_new_channel_until_the_timeout(
    servers: Servers, names: Names, amqp_cleanup: list[str]
) -> None:
    """A queue that refuses every message (full, reject-publish) nacks each attempt.

    Each nack moves publishing to a new channel (a 3.10 channel that nacked a quorum
    queue once may keep nacking it); at the timeout the publish fails saying so, and
    the broker keeps publishing to other queues.
    """
    import aio_pika

    full = f"{names.namespace}.full"
    amqp_cleanup.append(full)
    broker = RabbitBroker(servers.amqp_url, names, timeout=2.0)
    await broker.connect()
    try:
        connection = await aio_pika.connect(servers.amqp_url)
        try:
            channel = await connection.channel()
            queue = await channel.declare_queue(
                full,
                durable=True,
                arguments={
                    # A classic queue nacks at once; a quorum queue only once it is over.
                    "x-queue-type": "classic",
                    "x-max-length": 1,
                    "x-overflow": "reject-publish",
                },
            )
            await queue.bind(names.exchange, routing_key=full)
            await broker.publish(full, b"fills it")
        finally:
            await connection.close()
        with capture_logs() as logs, pytest.raises(PublishError, match="nacked") as raised:
            await broker.publish(full, b"refused")
        assert "was not confirmed within 2s" in str(raised.value)
        renewed = [line for line in logs if line["event"] == "rabbitmq.publish_channel_renewed"]
        assert len(renewed) >= 2, logs
        await broker.publish(names.runs_queue, b"still publishing")
        assert await broker.queue_depth(names.runs_queue) == 1
    finally:
        await broker.close()
