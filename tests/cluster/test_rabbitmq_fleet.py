"""A fleet given the cluster's three URLs runs every shape of workflow to completion."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from ledgerflow.eventlog.names import Names

import ledgerflow as lf
from ledgerflow.testing.namespace import delete_namespace
from tests.cluster.rabbit_cluster import RabbitCluster
from tests.cluster.rabbit_workload import (
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


async def test_a_fleet_on_the_cluster_runs_every_shape(
    rabbit_cluster: RabbitCluster,
    cluster_servers: Servers,
    names: Names,
    client: lf.Client,
    tmp_path: Path,
) -> None:
    fleet = start_fleet(cluster_servers, names, tmp_path)
    try:
        await wait_ready(fleet, cluster_servers, names)
        workload = Workload(client, names)
        runs, tokens = await workload.start("b")
        await workload.resume(tokens)
        await results(runs, timeout=90)
    finally:
        stopped = fleet.stop_all()
    assert all(s.clean for s in stopped), stopped
    await recorded_once(client, runs)
    assert {run.shape for run in runs} == {
        "fan-out", "chain", "continue-as-new", "sleep", "retries", "hook"
    }  # fmt: skip
