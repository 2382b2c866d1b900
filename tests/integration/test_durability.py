"""Durability settings against one real Redis (no replicas): refused, or not confirmed, loudly.

The shared server has no replicas and is Redis 7.0: ``replica`` can never be
confirmed there and ``aof`` (WAITAOF, Redis 7.2) is not available. What is checked
is that neither is ever reported as done. The cluster tests show both confirmed.
"""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis
from ledgerflow.eventlog.durability import Durability, DurabilityMode, call_durably
from ledgerflow.eventlog.errors import ConfigurationError, NotReplicatedError
from ledgerflow.eventlog.names import Names
from ledgerflow.eventlog.settings import Settings

from tests.processes import cli
from tests.servers import Servers

pytestmark = pytest.mark.integration


async def test_a_write_no_replica_confirms_is_written_but_not_reported_done(
    redis_client: aioredis.Redis, names: Names
) -> None:
    script = redis_client.register_script("return redis.call('INCR', KEYS[1])")
    key = f"{names.namespace}:probe:{{r1}}"
    barrier = names.barrier(key)
    quick = Durability(DurabilityMode.REPLICA, 1, timeout_ms=50)
    with pytest.raises(NotReplicatedError, match="0 of 1 replica"):
        await call_durably(redis_client, quick, script, [key], [], barrier)
    assert int(await redis_client.get(key)) == 1  # written on the master all the same
    assert 0 < await redis_client.pttl(barrier) <= 60_000


async def test_aof_durability_is_a_configuration_error_on_redis_7_0(
    servers: Servers, names: Names
) -> None:
    from ledgerflow.worker.backend import connect

    settings = Settings(servers.amqp_url, servers.redis_url, names.namespace, None, "aof")
    with pytest.raises(ConfigurationError, match=r"WAITAOF.*Redis 7\.2"):
        async with connect(settings):
            pass


def test_the_cli_refuses_an_unknown_durability(servers: Servers, namespace: str) -> None:
    done = cli(servers, namespace, "--redis-durability", "always", "runs", "list")
    assert done.returncode == 2, done.stderr
    assert "--redis-durability='always': expected none, replica[:N] or aof[:N]" in done.stderr
    done = cli(servers, namespace, "runs", "list", env={"LEDGERFLOW_REDIS_DURABILITY": "aof"})
    assert done.returncode == 2, done.stderr
    assert "Redis 7.2" in done.stderr
