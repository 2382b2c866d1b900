"""Redis clients made from a URL: one server, or a Redis Cluster, chosen by the scheme.

Everything that makes a Redis client from a URL (the store, the test and benchmark
helpers, namespace clean-up) comes here, so a deployment moves to a cluster by its
URL alone:

- ``redis://``, ``rediss://``, ``unix://``: one server, through redis-py's asyncio
  ``Redis`` over a blocking pool (a burst of callers waits for a connection instead
  of failing). Dropped connections are retried by redis-py itself.
- ``redis+cluster://host:port[,host:port...]`` and ``rediss+cluster://`` (TLS): a
  Redis Cluster, through redis-py's asyncio ``RedisCluster``. The listed nodes are
  only where discovery starts (one reachable node is enough): the client learns the
  masters, the replicas and who serves each slot, and follows MOVED and ASK
  redirects itself. User, password and query options are those of the one-server
  URL and apply to every node. A database other than 0 is refused (a cluster has
  only one), and so is an option the cluster client cannot use, by name. Its pools
  do not block (past ``max_connections`` on a node redis-py raises
  MaxConnectionsError at once), so the client holds a burst of callers at a gate of
  ``max_connections`` commands and pipelines in flight, and they wait, as on one
  server.

A cluster client that cannot find a usable view of the cluster (every node it
knows refuses connections, the nodes disagree during a failover) raises
``ClusterUnreachableError``, a redis ``ConnectionError``: the callers' backoff
(``eventlog.retrying``) waits it out like any outage. A node that is not in
cluster mode is a ConfigurationError (the URL should say ``redis://``), and a
refused login is redis-py's own AuthenticationError, as for one server.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import AsyncIterator, Sequence
from contextvars import ContextVar
from typing import Any, TypeAlias
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, ClusterPipeline, RedisCluster
from redis.asyncio.connection import SSLConnection, parse_url
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff, ExponentialWithJitterBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisClusterException
from redis.exceptions import TimeoutError as RedisTimeoutError

from .errors import ConfigurationError
from .urls import CLUSTER_SUFFIX, check_url, redact

RedisClient: TypeAlias = aioredis.Redis | RedisCluster
"""What the store and its helpers talk to; ``isinstance(c, RedisCluster)`` tells them apart."""

REDIS_SCHEMES = ("redis", "rediss", "unix", "redis+cluster", "rediss+cluster")
MAX_CONNECTIONS = 64
"""Per server (on a cluster: per node)."""
POOL_TIMEOUT = 30.0
HEALTH_CHECK_INTERVAL = 30
CLUSTER_RETRIES = 5
"""Attempts the cluster client makes itself (rediscovering the cluster in between) before a
connection error, CLUSTERDOWN or an uncovered slot reaches the caller's own backoff."""

_CLUSTER_OPTIONS = frozenset(inspect.signature(RedisCluster.__init__).parameters) - {"self"}
_NOT_FROM_URL = frozenset({"host", "port", "startup_nodes", "connection_class", "db"})


class ClusterUnreachableError(RedisConnectionError):
    """No node the cluster client knows gave it a usable view of the cluster (yet)."""


_INSIDE_GATE: ContextVar[bool] = ContextVar("ledgerflow_cluster_gate", default=False)
"""Set while a task holds the gate: a pipeline retrying a redirected command through
the client must not wait for a second place (every place held that way is a deadlock)."""


class ClusterClient(RedisCluster):
    """redis-py's cluster client, whose failures to discover the cluster are outages,
    and whose callers wait for a connection instead of failing.

    redis-py raises a bare RedisClusterException when no node answers or the answers
    do not cover every slot, the same class as for a command whose keys span slots
    (a bug). This tells them apart where it happens: discovery.

    redis-py's cluster pools raise MaxConnectionsError the moment a node's
    ``max_connections`` are all in use (a producer starting 1,000 runs at once, one
    run's hot slot). The gate admits ``max_connections`` commands and pipelines at a
    time: each uses at most one connection per node, so no node's pool runs out, and
    the rest wait up to ``POOL_TIMEOUT``, as callers of the one-server blocking pool do.
    """

    def __init__(self, *, max_connections: int = MAX_CONNECTIONS, **kwargs: Any) -> None:
        super().__init__(max_connections=max_connections, **kwargs)
        self._gate_size = max_connections
        self._gate = asyncio.Semaphore(max_connections)

    @contextlib.asynccontextmanager
    async def gate(self) -> AsyncIterator[None]:
        """A place among the ``max_connections`` in flight (already held: nothing more)."""
        if _INSIDE_GATE.get():
            yield
            return
        try:
            async with asyncio.timeout(POOL_TIMEOUT):
                await self._gate.acquire()
        except TimeoutError:
            raise RedisConnectionError(
                f"no free Redis Cluster connection within {POOL_TIMEOUT:g} s "
                f"({self._gate_size} commands in flight)"
            ) from None
        token = _INSIDE_GATE.set(True)
        try:
            yield
        finally:
            _INSIDE_GATE.reset(token)
            self._gate.release()

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        async with self.gate():
            return await super().execute_command(*args, **kwargs)

    def pipeline(
        self, transaction: Any | None = None, shard_hint: Any | None = None
    ) -> ClusterPipeline:
        if shard_hint:
            raise RedisClusterException("shard_hint is deprecated in cluster mode")
        return GatedClusterPipeline(self, transaction)

    async def initialize(
        self,
        additional_startup_nodes_info: list[tuple[str, int]] | None = None,
        last_failed_node_name: str | None = None,
    ) -> RedisCluster:
        try:
            return await super().initialize(additional_startup_nodes_info, last_failed_node_name)
        except RedisClusterException as exc:
            cause = exc.__cause__
            if isinstance(cause, RedisClusterException) and "not enabled" in str(cause):
                raise ConfigurationError(
                    f"a Redis node is not in cluster mode ({cause}): use redis:// or "
                    "rediss:// for one server, redis+cluster:// for a cluster"
                ) from exc
            if cause is not None and not isinstance(
                cause, (RedisConnectionError, RedisTimeoutError, OSError)
            ):
                raise cause from None  # a refused login, an unusable option: not an outage
            raise ClusterUnreachableError(str(exc)) from exc


class GatedClusterPipeline(ClusterPipeline):
    """A cluster pipeline that takes its place at its client's gate while it runs."""

    _event_dispatcher: Any  # redis.typing's protocol names it; redis-py's pipeline has none

    def __init__(self, client: ClusterClient, transaction: Any | None = None) -> None:
        super().__init__(client, transaction)
        self._gated_client = client

    async def execute(
        self, raise_on_error: bool = True, allow_redirections: bool = True
    ) -> list[Any]:
        async with self._gated_client.gate():
            return await super().execute(raise_on_error, allow_redirections)


def is_cluster_url(url: str) -> bool:
    return url.partition("://")[0].endswith(CLUSTER_SUFFIX)


def redis_client(url: str, *, max_connections: int = MAX_CONNECTIONS) -> RedisClient:
    """The client for ``url`` (checked first): ConfigurationError for what cannot work."""
    check_url(url, REDIS_SCHEMES, "Redis")
    if is_cluster_url(url):
        return cluster_client(url, max_connections=max_connections)
    try:
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=POOL_TIMEOUT,
            health_check_interval=HEALTH_CHECK_INTERVAL,
            retry=Retry(ExponentialBackoff(cap=1.0, base=0.02), retries=8),
            retry_on_error=[RedisConnectionError, RedisTimeoutError, ConnectionResetError],
        )
    except (ValueError, TypeError) as exc:
        raise ConfigurationError(f"Redis URL {redact(url)!r} is not usable: {exc}") from exc
    return aioredis.Redis(connection_pool=pool)


def cluster_client(url: str, *, max_connections: int = MAX_CONNECTIONS) -> ClusterClient:
    """A cluster client for ``redis+cluster://`` or ``rediss+cluster://`` (not connected yet)."""
    shown = redact(url)
    nodes, options = cluster_options(url)
    settings: dict[str, Any] = {
        "max_connections": max_connections,
        "health_check_interval": HEALTH_CHECK_INTERVAL,
        "retry": Retry(ExponentialWithJitterBackoff(base=0.05, cap=1.0), retries=CLUSTER_RETRIES),
        **options,  # the URL's own options win, as for one server
    }
    try:
        return ClusterClient(
            startup_nodes=[ClusterNode(host, port) for host, port in nodes], **settings
        )
    except (ValueError, TypeError, RedisClusterException) as exc:
        raise ConfigurationError(f"Redis URL {shown!r} is not usable: {exc}") from exc


def cluster_options(url: str) -> tuple[list[tuple[str, int]], dict[str, Any]]:
    """The startup nodes of a cluster URL, and the client options its user and query give."""
    shown = redact(url)
    scheme = url.partition("://")[0]
    parts = urlsplit(url)
    hosts = parts.netloc.rpartition("@")[2]
    userinfo = parts.netloc[: -len(hosts) - 1] if "@" in parts.netloc else ""
    nodes = [_node(hostport) for hostport in hosts.split(",")]
    if parts.path not in ("", "/", "/0"):
        raise ConfigurationError(
            f"Redis URL {shown!r} names database {parts.path.lstrip('/')!r}; "
            "a Redis Cluster has only database 0"
        )
    # One node's URL carries the user, password and options: redis-py parses it (and
    # percent-decodes) exactly as it does for one server.
    single = f"{scheme.removesuffix(CLUSTER_SUFFIX)}://{userinfo}{'@' if userinfo else ''}"
    single += f"{hosts.split(',')[0]}{parts.path}{'?' + parts.query if parts.query else ''}"
    try:
        options: dict[str, Any] = dict(parse_url(single))
    except ValueError as exc:
        raise ConfigurationError(f"Redis URL {shown!r} is not usable: {exc}") from exc
    if options.get("db", 0) != 0:
        raise ConfigurationError(f"Redis URL {shown!r}: a Redis Cluster has only database 0")
    tls = options.get("connection_class") is SSLConnection
    for key in _NOT_FROM_URL:
        options.pop(key, None)
    unknown = sorted(set(options) - _CLUSTER_OPTIONS)
    if unknown:
        raise ConfigurationError(
            f"Redis URL {shown!r}: option(s) {', '.join(unknown)} cannot be used with a "
            "Redis Cluster"
        )
    ssl_options = sorted(k for k in options if k.startswith("ssl_"))
    if ssl_options and not tls:
        raise ConfigurationError(
            f"Redis URL {shown!r}: TLS options ({', '.join(ssl_options)}) need rediss+cluster://"
        )
    if tls:
        options["ssl"] = True
    return nodes, options


def _node(hostport: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` (checked by ``check_url``); port 6379 if left out."""
    if hostport.startswith("["):
        host, _, rest = hostport[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else 6379
    host, _, port = hostport.partition(":")
    return host, int(port) if port else 6379


async def call_scripts(
    client: RedisClient, script: AsyncScript, calls: Sequence[tuple[Sequence[str], Sequence[Any]]]
) -> list[Any]:
    """``script`` once per (keys, args) in ``calls``, pipelined; the replies in order.

    One server: a plain pipeline, which loads the script first if the server lacks
    it. A cluster: redis-py refuses EVALSHA in a cluster pipeline through the script
    object, so the calls are queued as raw EVALSHA commands (each goes to its keys'
    node); a node without the script (a promoted replica starts with an empty script
    cache) answers NOSCRIPT, and those calls are made again one by one through the
    script object, which loads it. The first other error is raised, as a pipeline does.
    """
    if not calls:
        return []
    if not isinstance(client, RedisCluster):
        async with client.pipeline(transaction=False) as pipe:
            for keys, args in calls:
                await script(keys=keys, args=args, client=pipe)
            return list(await pipe.execute())
    cluster_pipe = client.pipeline()
    for keys, args in calls:
        cluster_pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
    replies = list(await cluster_pipe.execute(raise_on_error=False))
    for i, ((keys, args), reply) in enumerate(zip(calls, replies, strict=True)):
        if isinstance(reply, NoScriptError):
            replies[i] = await script(keys=keys, args=args)
        elif isinstance(reply, Exception):
            raise reply
    return replies
