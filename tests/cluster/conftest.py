"""Fixtures of the cluster tests: each cluster's own live in its own module."""

from typing import Any

from tests.cluster.rabbit_fixtures import BOOTED, cluster_servers, rabbit_cluster
from tests.cluster.redis_fixtures import cluster_names, cluster_store, redis_cluster, store_names

__all__ = [
    "cluster_names",
    "cluster_servers",
    "cluster_store",
    "rabbit_cluster",
    "redis_cluster",
    "store_names",
]


def pytest_terminal_summary(terminalreporter: Any) -> None:
    for seconds in BOOTED:
        terminalreporter.write_line(f"3-node RabbitMQ cluster started in {seconds:.1f} s")
