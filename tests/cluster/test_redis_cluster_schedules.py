"""The schedule conformance cases again, on a Redis Cluster: every schedule script in one slot.

The cases are ``tests/eventlog/test_schedule_conformance.py``'s own; only the client
underneath changes (a cluster client from a ``redis+cluster://`` URL), as in
``test_redis_cluster_conformance.py``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from ledgerflow.eventlog.names import Names
from ledgerflow.eventlog.redis_client import RedisClient
from ledgerflow.eventlog.redis_client import redis_client as make_client

from ledgerflow.testing.namespace import delete_redis_keys
from tests.cluster.redis_cluster import RedisClusterNodes
from tests.eventlog.test_schedule_conformance import *  # noqa: F403  (the cases, collected again)

pytestmark = pytest.mark.integration


@pytest.fixture
def names(cluster_names: Names) -> Names:
    return cluster_names


@pytest.fixture
async def redis_client(
    redis_cluster: RedisClusterNodes, cluster_names: Names
) -> AsyncIterator[RedisClient]:
    client = make_client(redis_cluster.url())
    yield client
    await delete_redis_keys(client, cluster_names)
    await client.aclose()


@pytest.fixture
def store_client(redis_client: RedisClient) -> RedisClient:
    return redis_client
