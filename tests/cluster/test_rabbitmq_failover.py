"""The node a fleet is connected to dies mid-run: everything moves on, nothing is lost or doubled.

The fleet (2 workers, 1 scheduler, no reconciler to cover for lost messages) and the
test's own client are given the three URLs, node 1 first, so all of them are on
node 1, which is also where the namespace's quorum queues have their leaders (they
were declared there). Node 1's Erlang VM is then SIGKILLed while runs of every
shape are in flight, and restarted after the test however it ends.
"""

from __future__ import annotations

import asyncio
import datetime
import itertools
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from ledgerflow.broker import RabbitBroker
from ledgerflow.eventlog.events import EventType
from ledgerflow.eventlog.names import Names
from ledgerflow.eventlog.urls import redact

import ledgerflow as lf
from ledgerflow.testing.namespace import delete_namespace
from tests.cluster.rabbit_cluster import RabbitCluster
from tests.cluster.rabbit_workload import (
    SCHEDULERS,
    WORKERS,
    Started,
    Workload,
    recorded_once,
    results,
    start_fleet,
    wait_ready,
)
from tests.servers import Servers

pytestmark = pytest.mark.integration


@pytest.fixture
async def client(cluster_servers: Servers, names: Names) -> AsyncIterator[lf.Client]:
    async with lf.Client.connect(
        cluster_servers.amqp_url, cluster_servers.redis_url, namespace=names.namespace
    ) as connected:
        yield connected
    await delete_namespace(
        cluster_servers.amqp_url, cluster_servers.redis_url, names.namespace, best_effort=True
    )


def our_connections(cluster: RabbitCluster, names: Names) -> list[int]:
    """The server ports of this namespace's AMQP connections (one per process)."""
    wanted = f"ledgerflow:{names.namespace}"
    ports = []
    for row in cluster.connections():
        properties = row.get("client_properties") or []
        # rabbitmqctl's JSON gives client properties as [name, type, value] triples.
        named = {p[0]: p[2] for p in properties if isinstance(p, list) and len(p) == 3}
        if named.get("connection_name") == wanted:
            ports.append(int(row["port"]))
    return sorted(ports)


async def wait_for(check: object, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(check):  # type: ignore[arg-type]
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} within {timeout:g} s")
        await asyncio.sleep(0.5)


async def test_killing_the_node_everyone_is_on_loses_and_doubles_nothing(
    rabbit_cluster: RabbitCluster,
    cluster_servers: Servers,
    names: Names,
    client: lf.Client,
    tmp_path: Path,
) -> None:
    first, second, third = rabbit_cluster.nodes
    processes = WORKERS + SCHEDULERS
    fleet = start_fleet(cluster_servers, names, tmp_path)
    try:
        await wait_ready(fleet, cluster_servers, names)
        # Everyone (the processes and this client) is on node 1, the first URL.
        assert our_connections(rabbit_cluster, names) == [first.amqp_port] * (processes + 1)

        workload = Workload(client, names, scale=3, chain_length=40)
        before, before_tokens = await workload.start("before")
        await asyncio.sleep(1.5)  # steps running, messages unacked, publishes in flight
        killed_at, killed_ms = time.monotonic(), time.time() * 1000
        await asyncio.to_thread(rabbit_cluster.kill, first)

        # While node 1 is down: new runs and hook payloads go through the survivors,
        # and a new connection given node 1 first goes to node 2.
        after, after_tokens = await workload.start("after")
        await workload.resume(before_tokens + after_tokens)
        late = RabbitBroker(cluster_servers.amqp_url, Names(names.namespace))
        await late.connect()
        try:
            assert late.connected_url is not None
            assert late.connected_url.startswith(rabbit_cluster.url(second))
        finally:
            await late.close()

        await results(before + after, timeout=120)
        recovered = time.monotonic() - killed_at

        # Consumers and publishers are on the survivors, one connection per process.
        ports = our_connections(rabbit_cluster, names)
        assert len(ports) == processes + 1, ports
        assert first.amqp_port not in ports and set(ports) <= {second.amqp_port, third.amqp_port}
        await wait_ready(fleet, cluster_servers, names)  # through node 2: node 1 is down
    finally:
        stopped = fleet.stop_all()
        await asyncio.to_thread(rabbit_cluster.ensure_running, first)
    assert all(s.clean for s in stopped), stopped

    restarts = await recorded_once(client, before + after)
    pause = await longest_pause(client, before + after, killed_ms)
    lost = redact(rabbit_cluster.url(first))
    survivors = [redact(rabbit_cluster.url(n)) for n in (second, third)]
    moved: dict[str, float] = {}
    for name, lines in fleet.log_lines().items():
        text = "\n".join(lines)
        assert rabbit_cluster.password not in text, f"{name} logged the password"
        events = [json.loads(line) for line in lines if line.startswith("{")]
        failovers = [e for e in events if e.get("event") == "rabbitmq.failover"]
        assert failovers and failovers[0]["lost"].startswith(lost), f"{name}:\n{text[-2000:]}"
        back = [e for e in events if e.get("event") == "rabbitmq.reconnected"]
        assert back and back[-1]["node"].split("?")[0] in survivors, f"{name}:\n{text[-2000:]}"
        moved[name] = _ms(back[0]["timestamp"]) - killed_ms
    print(
        f"node 1 killed: processes on a survivor after {_seconds(moved)}; longest pause "
        f"between two step starts {pause / 1000:.1f} s; all {len(before + after)} runs done "
        f"{recovered:.1f} s after the kill; steps started again: {dict(restarts)}"
    )


async def longest_pause(client: lf.Client, runs: list[Started], around_ms: float) -> float:
    """The longest time (ms) without a step starting, from just before ``around_ms`` on."""
    starts: list[int] = []
    for run in runs:
        starts += [
            event.ts
            for event in await client.events(run.handle.run_id)
            if event.type is EventType.STEP_STARTED and event.ts >= around_ms - 1000
        ]
    starts.sort()
    return float(max(b - a for a, b in itertools.pairwise(starts)))


def _ms(timestamp: str) -> float:
    return datetime.datetime.fromisoformat(timestamp).timestamp() * 1000


def _seconds(by_name: dict[str, float]) -> str:
    return ", ".join(f"{name} {ms / 1000:.1f} s" for name, ms in sorted(by_name.items()))
