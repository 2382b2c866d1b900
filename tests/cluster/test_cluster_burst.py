"""A burst of callers on a Redis Cluster waits for a connection, as on one server.

redis-py's cluster pools raise MaxConnectionsError the moment a node's connections
are all in use; the one-server pool blocks. A producer starting 1,000 runs at once
(the benchmark's many-runs scenario) must not turn into a storm of retried errors
on a cluster. These run on the session's real cluster with a tiny pool.
"""

from __future__ import annotations

import asyncio

import pytest
from ledgerflow.eventlog.names import Names
from ledgerflow.eventlog.redis_client import ClusterClient, cluster_client
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.exceptions import MaxConnectionsError

from ledgerflow.testing.namespace import delete_redis_keys
from tests.cluster.redis_cluster import RedisClusterNodes, keyslot

pytestmark = pytest.mark.integration

POOL = 2
BURST = 200


def counter(names: Names) -> str:
    """One key, so the whole burst lands on one node's pool."""
    return f"{names.namespace}:{{burst}}:n"


async def test_the_premise_a_bare_cluster_client_fails_a_burst_past_its_pool(
    redis_cluster: RedisClusterNodes, cluster_names: Names
) -> None:
    """Why the gate exists; if redis-py ever blocks instead, the gate can go."""
    nodes = [ClusterNode("127.0.0.1", port) for port in redis_cluster.ports[:3]]
    bare = RedisCluster(startup_nodes=nodes, max_connections=POOL)
    try:
        outcomes = await asyncio.gather(
            *(bare.incr(counter(cluster_names)) for _ in range(BURST)), return_exceptions=True
        )
        assert any(isinstance(o, MaxConnectionsError) for o in outcomes)
    finally:
        await delete_redis_keys(bare, cluster_names)
        await bare.aclose()


async def test_a_burst_of_commands_past_the_pool_waits_and_all_succeed(
    redis_cluster: RedisClusterNodes, cluster_names: Names
) -> None:
    client = cluster_client(redis_cluster.url(), max_connections=POOL)
    assert isinstance(client, ClusterClient)
    try:
        key = counter(cluster_names)
        replies = await asyncio.gather(*(client.incr(key) for _ in range(BURST)))
        assert sorted(replies) == list(range(1, BURST + 1))
        assert int(await client.get(key)) == BURST
    finally:
        await delete_redis_keys(client, cluster_names)
        await client.aclose()


async def test_a_burst_of_pipelines_past_the_pool_waits_and_all_succeed(
    redis_cluster: RedisClusterNodes, cluster_names: Names
) -> None:
    """Each pipeline also touches every master: one place at the gate covers them all."""
    client = cluster_client(redis_cluster.url(), max_connections=POOL)
    keys = [f"{cluster_names.namespace}:{{{tag}}}:n" for tag in ("a", "b", "c", "d", "e", "f")]
    assert len({redis_cluster.master_of_slot(k) for k in map(keyslot, keys)}) == 3

    async def one() -> list[int]:
        async with client.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.incr(key)
            return [int(n) for n in await pipe.execute()]

    try:
        await asyncio.gather(*(one() for _ in range(BURST // 4)))
        assert [int(await client.get(k)) for k in keys] == [BURST // 4] * len(keys)
    finally:
        await delete_redis_keys(client, cluster_names)
        await client.aclose()
