"""Fixtures of the cluster tests: each cluster's own live in its own module."""

from tests.cluster.redis_fixtures import cluster_names, cluster_store, redis_cluster

__all__ = ["cluster_names", "cluster_store", "redis_cluster"]
