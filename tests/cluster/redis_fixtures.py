"""The Redis Cluster of a test session, and a store on it in a namespace of the test's own.

The cluster (``redis_cluster.py``) starts once per session, on first use, and is
stopped at the end of the session however it ends (this finalizer, and an atexit
hook for a session that dies). Where redis-server or redis-cli are missing, or
another session holds the ports, the tests that need it are skipped saying why.
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


@pytest.fixture(scope="session")
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
    """A store on the cluster (``redis+cluster://`` URL); the namespace is deleted after."""
    store = RedisEventStore.from_url(redis_cluster.url(), cluster_names)
    await store.ping()
    try:
        yield store
    finally:
        await delete_redis_keys(store.client, cluster_names)
        await store.close()
