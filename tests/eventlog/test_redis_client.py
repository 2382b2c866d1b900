"""Cluster URLs and durability settings: what they become, and one clear error for what cannot work.

No server is needed: the cluster client connects lazily, so building one from a
URL shows exactly which nodes and options it would use.
"""

from __future__ import annotations

from typing import Any

import pytest
import redis.asyncio as aioredis
from ledgerflow.eventlog.durability import Durability, DurabilityMode
from ledgerflow.eventlog.errors import ConfigurationError
from ledgerflow.eventlog.names import Names
from ledgerflow.eventlog.redis_client import (
    ClusterClient,
    cluster_options,
    is_cluster_url,
    redis_client,
)
from ledgerflow.eventlog.retrying import is_transient, torn_connection
from ledgerflow.eventlog.urls import redact
from redis.crc import key_slot


def test_cluster_url_lists_the_startup_nodes_and_the_one_server_options() -> None:
    nodes, options = cluster_options(
        "redis+cluster://app:S3cr%2Fet@10.0.0.1:7000,10.0.0.2,[::1]:7002/0"
        "?socket_timeout=2.5&health_check_interval=5&max_connections=9"
    )
    assert nodes == [("10.0.0.1", 7000), ("10.0.0.2", 6379), ("::1", 7002)]
    assert options["username"] == "app"
    assert options["password"] == "S3cr/et"  # percent-decoded, as for one server
    assert options["socket_timeout"] == 2.5
    assert options["health_check_interval"] == 5
    assert options["max_connections"] == 9
    assert "ssl" not in options


def test_tls_cluster_url_turns_tls_on_with_its_options() -> None:
    _, options = cluster_options("rediss+cluster://h:7000?ssl_ca_certs=/tmp/ca.pem")
    assert options["ssl"] is True
    assert options["ssl_ca_certs"] == "/tmp/ca.pem"


async def test_a_cluster_url_builds_a_cluster_client_and_a_plain_one_does_not() -> None:
    cluster = redis_client("redis+cluster://127.0.0.1:17100,127.0.0.1:17101")
    single = redis_client("redis://127.0.0.1:6379/0")
    try:
        assert isinstance(cluster, ClusterClient)
        assert isinstance(single, aioredis.Redis)
        assert sorted(n.port for n in cluster.startup_nodes) == [17100, 17101]
        assert is_cluster_url("rediss+cluster://h:1") and not is_cluster_url("rediss://h:1")
    finally:
        await cluster.aclose()
        await single.aclose()


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("redis+cluster://h:7000/3", "only database 0"),
        ("redis+cluster://h:7000?db=2", "only database 0"),
        ("redis+cluster://h:7000,h:99999", "port '99999'"),
        ("redis+cluster://h:7000,,h:7001", "empty node"),
        ("redis+cluster://h:7000?retry_on_timeout=yes", "retry_on_timeout cannot be used"),
        ("redis+cluster://h:7000?ssl_ca_certs=/tmp/ca.pem", r"need rediss\+cluster://"),
        ("redis+cluster://h:7000?socket_timeout=soon", "not usable"),
        ("rediss+cluster://:hunter22@h:7000/9", "only database 0"),
    ],
)
def test_unusable_cluster_urls_are_one_clear_error(url: str, says: str) -> None:
    with pytest.raises(ConfigurationError, match=says) as caught:
        redis_client(url)
    assert "hunter22" not in str(caught.value)


def test_cluster_urls_are_redacted_whole() -> None:
    url = "rediss+cluster://app:hunter22@a:7000,b:7001/0?password=topsecret"
    assert redact(url) == "rediss+cluster://app:***@a:7000,b:7001/0?password=***"


@pytest.mark.parametrize(
    ("text", "mode", "replicas"),
    [
        ("none", DurabilityMode.NONE, 0),
        ("", DurabilityMode.NONE, 0),
        ("replica", DurabilityMode.REPLICA, 1),
        ("REPLICA:2", DurabilityMode.REPLICA, 2),
        ("aof", DurabilityMode.AOF, 0),
        ("aof:1", DurabilityMode.AOF, 1),
    ],
)
def test_durability_settings(text: str, mode: DurabilityMode, replicas: int) -> None:
    parsed = Durability.parse(text)
    assert (parsed.mode, parsed.replicas) == (mode, replicas)
    assert parsed.waits == (mode is not DurabilityMode.NONE)


@pytest.mark.parametrize("text", ["all", "replica:0", "replica:x", "replica:99", "none:1", "aof:"])
def test_bad_durability_settings_say_what_is_allowed(text: str) -> None:
    with pytest.raises(ConfigurationError, match="LEDGERFLOW_REDIS_DURABILITY"):
        Durability.parse(text)


def test_what_a_durable_append_waits_for_and_when_it_is_short() -> None:
    replica = Durability.parse("replica:2")
    assert replica.wait_command() == ["WAIT", 2, replica.timeout_ms]
    assert replica.short(2) is None
    assert replica.short(1) == "1 of 2 replica(s) confirmed"
    aof = Durability.parse("aof:1")
    assert aof.wait_command() == ["WAITAOF", 1, 1, aof.timeout_ms]
    assert aof.short([1, 1]) is None
    assert aof.short([0, 1]) == "the master's append-only file was not fsynced"
    assert aof.short([1, 0]) == "0 of 1 replica(s) fsynced their append-only file"


@pytest.mark.parametrize("key", ["ns:run:{r-1}:log", "ns:blob:{shard7}:abc", "ns:active:3"])
def test_the_barrier_of_a_key_lives_in_its_slot(key: str) -> None:
    assert key_slot(Names("ns").barrier(key).encode()) == key_slot(key.encode())


def _raised_in(filename: str, call: str) -> BaseException:
    """The exception ``call`` raises from code that claims to live in ``filename``."""
    scope: dict[str, Any] = {}
    exec(compile(f"def write(writer):\n    {call}\n", filename, "exec"), scope)
    try:
        scope["write"](None)
    except Exception as exc:
        return exc
    raise AssertionError("did not raise")


def test_a_socket_torn_down_under_redis_py_is_transient_and_other_bugs_are_not() -> None:
    redis_py = "/venv/lib/python3.11/site-packages/redis/asyncio/connection.py"
    torn = _raised_in(redis_py, "writer.writelines([b'PING'])")
    assert isinstance(torn, AttributeError) and torn_connection(torn) and is_transient(torn)
    ours = _raised_in("/work/eventlog/redis_store.py", "writer.writelines([b'PING'])")
    assert isinstance(ours, AttributeError) and not is_transient(ours)
    assert not torn_connection(_raised_in(redis_py, "int('x')"))  # a ValueError
