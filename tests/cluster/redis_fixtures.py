"""The Redis Cluster of a test session, and a store on it in a namespace of the test's own.

The cluster (``redis_cluster.py``, about 3 s to start) starts on first use and is
stopped when the last test of this directory has run, however it ends (this
finalizer; an atexit hook for an interpreter that exits without it; the next
session's clean-up, by pid, for one that was killed). Where redis-server or
redis-cli are missing, or another session holds the ports, the tests that need it
are skipped saying why.
Each test gets a healthy cluster: one that killed a master restarts it, but the
next test waits until every node agrees again.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
from ledgerflow.eventlog.names import Names
from ledgerflow.eventlog.redis_store import RedisEventStore

from ledgerflow.testing.namespace import delete_redis_keys
from tests.cluster.redis_cluster import ClusterUnavailable, RedisClusterNodes


@pytest.fixture(scope="package")
def redis_cluster() -> Iterator[RedisClusterNodes]:
    cluster = RedisClusterNodes()
    try:
        cluster.start()
    except ClusterUnavailable as exc:
        pytest.skip(f"no Redis Cluster for this session: {exc}")
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def cluster_names(redis_cluster: RedisClusterNodes) -> Names:
    """A namespace of the test's own, on a cluster that is whole again."""
    redis_cluster.wait_healthy()
    return Names(f"c{uuid.uuid4().hex[:12]}")


@pytest.fixture
async def cluster_store(
    redis_cluster: RedisClusterNodes, cluster_names: Names
) -> AsyncIterator[RedisEventStore]:
    """A store on the cluster (``redis+cluster://`` URL), on the namespace's layout as every
    process sees it (16 shards per master); the namespace is deleted after."""
    store = RedisEventStore.from_url(redis_cluster.url(), cluster_names)
    await store.ping()
    await store.adopt_layout()
    try:
        yield store
    finally:
        await delete_redis_keys(store.client, store.names)
        await store.close()


@pytest.fixture
def store_names(cluster_store: RedisEventStore) -> Names:
    """The names ``cluster_store`` uses (its namespace, with the shard count it adopted)."""
    return cluster_store.names
