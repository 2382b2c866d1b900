"""Quorum queues declared by ledgerflow on a 3-node cluster have a replica on every node."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from ledgerflow.broker import RabbitBroker
from ledgerflow.eventlog.errors import ConfigurationError
from ledgerflow.eventlog.names import Names

from ledgerflow.testing.namespace import delete_queues
from tests.cluster.rabbit_cluster import RabbitCluster
from tests.servers import Servers

pytestmark = pytest.mark.integration


@pytest.fixture
async def cleanup(cluster_servers: Servers) -> AsyncIterator[list[Names]]:
    made: list[Names] = []
    yield made
    for names in made:
        await delete_queues(cluster_servers.amqp_url, names)


def nodes_of(cluster: RabbitCluster, queue: str) -> dict[str, object]:
    return cluster.quorum_queues()[queue]


async def test_default_quorum_queues_have_a_member_on_each_of_three_nodes(
    rabbit_cluster: RabbitCluster, cluster_servers: Servers, names: Names, cleanup: list[Names]
) -> None:
    broker = RabbitBroker(cluster_servers.amqp_url, names)
    cleanup.append(names)
    await broker.connect()
    try:
        extra = await broker.declare_step_queue("extra")
    finally:
        await broker.close()
    queues = rabbit_cluster.quorum_queues()
    everyone = sorted(node.name for node in rabbit_cluster.nodes)
    for queue in (names.runs_queue, names.step_queue(), names.dead_queue, extra):
        row = queues[queue]
        assert row["type"] == "quorum", row
        assert sorted(row["members"]) == everyone, row
        assert row["leader"] in everyone, row


async def test_a_configured_quorum_size_is_used_and_capped_at_the_cluster_size(
    rabbit_cluster: RabbitCluster, cluster_servers: Servers, cleanup: list[Names]
) -> None:
    two, seven = Names("tqsize2"), Names("tqsize7")
    for names, size in ((two, 2), (seven, 7)):
        cleanup.append(names)
        broker = RabbitBroker(cluster_servers.amqp_url, names, quorum_size=size)
        await broker.connect()
        await broker.close()
    queues = rabbit_cluster.quorum_queues()
    assert len(queues[two.runs_queue]["members"]) == 2
    assert len(queues[seven.runs_queue]["members"]) == 3

    # The size is compared on every declaration (RabbitMQ 3.10): a deployment that
    # changes it is told to keep one value, not left with queues of mixed sizes.
    other = RabbitBroker(cluster_servers.amqp_url, two, quorum_size=3)
    with pytest.raises(ConfigurationError, match="LEDGERFLOW_QUORUM_SIZE"):
        await other.connect()
