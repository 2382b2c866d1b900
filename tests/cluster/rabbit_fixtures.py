"""The RabbitMQ cluster of the cluster tests (``rabbit_cluster.py``), and its URLs.

Started once, the first time a test asks for it, and stopped when the last test of
this directory has run (package scope: the cluster lives only while its tests run,
so another session waiting for the cluster lock waits minutes, not a whole
``make test``), however the tests end: the fixture's finaliser, ``atexit`` for an
interpreter that exits without it, and the next session's clean-up for one that
was killed. Where rabbitmq-server is not installed, the tests that need it are
skipped saying why.

Redis is the shared test server here, as for every other integration test: only
RabbitMQ is clustered by these fixtures.
"""

from __future__ import annotations

import atexit
from collections.abc import Iterator

import pytest

from tests.cluster.rabbit_cluster import ClusterError, RabbitCluster, scripts_dir
from tests.servers import Servers

BOOTED: list[float] = []
"""Seconds each cluster of this session took to start (the terminal summary shows them)."""


@pytest.fixture(scope="package")
def rabbit_cluster() -> Iterator[RabbitCluster]:
    scripts = scripts_dir()
    if scripts is None:
        pytest.skip(
            "rabbitmq-server is not installed here: the RabbitMQ cluster tests start "
            "three nodes of their own from it (Debian: apt-get install rabbitmq-server)"
        )
    cluster = RabbitCluster(scripts)
    atexit.register(cluster.stop)
    try:
        BOOTED.append(cluster.start())
    except ClusterError as exc:
        pytest.fail(f"could not start the 3-node RabbitMQ cluster: {exc}", pytrace=False)
    try:
        yield cluster
    finally:
        cluster.stop()
        atexit.unregister(cluster.stop)


@pytest.fixture
def cluster_servers(servers: Servers, rabbit_cluster: RabbitCluster) -> Servers:
    """The RabbitMQ cluster's three URLs (node 1 first) and the shared Redis."""
    return Servers(amqp_url=rabbit_cluster.urls(), redis_url=servers.redis_url)
