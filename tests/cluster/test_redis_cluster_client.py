"""The store's client on a real Redis Cluster: routing, pipelined scripts, the watcher, durability.

These need no particular key layout: each call here touches one slot (or is split
by slot). Appends, whose keys must share a slot, are covered by the cluster runs
in ``test_redis_cluster_runs.py``.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from typing import Any

import pytest
from ledgerflow.eventlog import codec
from ledgerflow.eventlog.durability import Durability, DurabilityMode, call_durably
from ledgerflow.eventlog.errors import (
    ConfigurationError,
    NotReplicatedError,
    ServiceUnavailableError,
)
from ledgerflow.eventlog.names import Names
from ledgerflow.eventlog.redis_client import ClusterClient, redis_client
from ledgerflow.eventlog.redis_store import RedisEventStore
from ledgerflow.eventlog.timers import Timer, TimerKind
from ledgerflow.eventlog.watch import ClusterStreamWatcher
from redis.asyncio.cluster import RedisCluster

from ledgerflow.ops.lease import Lease
from ledgerflow.testing.namespace import count_redis_keys, delete_namespace
from tests.cluster.redis_cluster import RedisClusterNodes, keyslot

pytestmark = pytest.mark.integration


def run_ids(count: int) -> list[str]:
    return [f"run-{uuid.uuid4().hex[:10]}" for _ in range(count)]


def spread(cluster: RedisClusterNodes, names: Names, count: int = 200) -> list[str]:
    """Run ids whose streams land on every master."""
    ids = run_ids(count)
    assert len({cluster.master_of_slot(keyslot(names.stream(r))) for r in ids}) == 3
    return ids


def entry(corr: str) -> dict[str, Any]:
    """A stream entry the store can decode (written around it, as a test may)."""
    return {"type": "step_started", "corr": corr, "v": "1", "data": codec.encode({"attempt": 1})}


async def flush_scripts(store: RedisEventStore) -> None:
    assert isinstance(store.client, RedisCluster)
    await store.client.execute_command("SCRIPT FLUSH", target_nodes=RedisCluster.PRIMARIES)


async def test_a_cluster_url_gives_a_cluster_store_that_reaches_every_master(
    cluster_store: RedisEventStore, redis_cluster: RedisClusterNodes
) -> None:
    assert isinstance(cluster_store.client, ClusterClient)
    assert sorted(n.port for n in cluster_store.client.get_primaries()) == redis_cluster.masters()
    assert abs(await cluster_store.now_ms() - time.time() * 1000) < 60_000
    assert await cluster_store.status("run-none") == {}
    assert await cluster_store.run_tail("run-none") == ("", "")
    assert await cluster_store.list_runs() == []
    assert await cluster_store.count_active_runs() == 0


async def test_a_namespace_on_three_masters_gets_sixteen_shards_on_each(
    redis_cluster: RedisClusterNodes, store_names: Names
) -> None:
    owners = Counter(redis_cluster.master_of_slot(keyslot(k)) for k in store_names.active_shards())
    assert sorted(owners.values()) == [16, 16, 16], owners


async def test_presence_keys_on_several_nodes_are_read_together(
    cluster_store: RedisEventStore, redis_cluster: RedisClusterNodes, store_names: Names
) -> None:
    identities = [f"host:{pid}" for pid in range(40)]
    ports = {
        redis_cluster.master_of_slot(keyslot(store_names.worker_presence(i))) for i in identities
    }
    assert len(ports) == 3
    for identity in identities[::2]:
        await cluster_store.mark_alive(identity, 60_000)
    assert await cluster_store.alive([*identities, "host:gone"]) == set(identities[::2])


async def test_timers_of_every_shard_are_claimed_even_by_nodes_that_lost_their_scripts(
    cluster_store: RedisEventStore, store_names: Names
) -> None:
    ids = run_ids(64)
    shards = {store_names.timer_for(r) for r in ids}
    assert len(shards) > 8
    for run_id in ids:
        timer = Timer(TimerKind.WAIT, run_id, "s1")
        await cluster_store.add_timer(timer, delay_ms=0)
    assert await cluster_store.count_timers() == len(ids)
    # A promoted replica starts with no scripts: the claim's pipelined EVALSHAs
    # answer NOSCRIPT there, and are made again through the script object.
    await flush_scripts(cluster_store)
    claimed = []
    for _ in range(10):
        claimed += await cluster_store.claim_timers(limit=100, lease_ms=60_000)
        if len(claimed) == len(ids):
            break
    assert sorted(d.timer.run_id for d in claimed) == sorted(ids)


async def test_the_watcher_reads_each_slot_on_its_own_master(
    cluster_store: RedisEventStore, redis_cluster: RedisClusterNodes, store_names: Names
) -> None:
    ids = spread(redis_cluster, store_names, 30)
    client = cluster_store.client
    waits = [asyncio.create_task(cluster_store.wait(r, "0-0", 20)) for r in ids]
    await asyncio.sleep(0.3)
    written = [await client.xadd(store_names.stream(r), entry("s1")) for r in ids]
    results = await asyncio.gather(*waits)
    watcher = cluster_store._watcher
    assert isinstance(watcher, ClusterStreamWatcher)
    assert watcher.slots == sorted({keyslot(store_names.stream(r)) for r in ids})
    for entry_id, events in zip(written, results, strict=True):
        assert [e.id for e in events] == [entry_id.decode()]


async def test_the_watcher_follows_a_slot_to_the_promoted_replica(
    cluster_store: RedisEventStore, redis_cluster: RedisClusterNodes, store_names: Names
) -> None:
    [run_id] = run_ids(1)
    stream = store_names.stream(run_id)
    client = cluster_store.client
    first = await client.xadd(stream, entry("s1"))
    waiter = asyncio.create_task(cluster_store.wait(run_id, first.decode(), 60))
    await asyncio.sleep(0.3)
    master = redis_cluster.master_of_slot(keyslot(stream))
    replica = redis_cluster.kill_master(master)
    try:
        took = await asyncio.to_thread(redis_cluster.wait_promoted, replica)
        # Written on the promoted replica: the waiter's reader must have moved there.
        for _ in range(100):
            try:
                await client.xadd(stream, entry("s2"))
                break
            except Exception:
                await asyncio.sleep(0.1)
        events = await asyncio.wait_for(waiter, 30)
        assert [e.corr for e in events] == ["s2"], f"failover took {took:.1f} s"
    finally:
        redis_cluster.restart(master)
        await asyncio.to_thread(redis_cluster.wait_healthy)


async def test_a_durable_call_waits_for_the_replica_on_the_keys_node(
    cluster_store: RedisEventStore, redis_cluster: RedisClusterNodes, store_names: Names
) -> None:
    client = cluster_store.client
    script = client.register_script("return redis.call('INCR', KEYS[1])")
    keys = [f"{store_names.namespace}:probe:{{{r}}}" for r in spread(redis_cluster, store_names)]
    await flush_scripts(cluster_store)  # a promoted replica's empty script cache
    replica = Durability(DurabilityMode.REPLICA, 1, timeout_ms=2000)
    for key in keys[:20]:
        barrier = store_names.barrier(key)
        assert await call_durably(client, replica, script, [key], [], barrier) == 1
        assert keyslot(barrier) == keyslot(key)
        assert await client.exists(barrier) == 1
    # Each master has one replica: asking for two is never confirmed, and says so.
    two = Durability(DurabilityMode.REPLICA, 2, timeout_ms=100)
    with pytest.raises(NotReplicatedError, match="1 of 2 replica"):
        await call_durably(client, two, script, [keys[0]], [], store_names.barrier(keys[0]))
    assert int(await client.get(keys[0])) == 2  # the write itself stands


async def test_aof_durability_is_refused_by_a_server_without_waitaof(
    redis_cluster: RedisClusterNodes, cluster_names: Names
) -> None:
    store = RedisEventStore.from_url(
        redis_cluster.url(), cluster_names, durability=Durability.parse("aof")
    )
    try:
        with pytest.raises(ConfigurationError, match=r"Redis 7\.2"):
            await store.ping()
    finally:
        await store.close()


async def test_namespace_cleanup_deletes_keys_on_every_master(
    cluster_store: RedisEventStore, redis_cluster: RedisClusterNodes, store_names: Names
) -> None:
    client = cluster_store.client
    for run_id in spread(redis_cluster, store_names, 100):
        await client.set(store_names.status(run_id), b"1")
    assert await count_redis_keys(client, store_names) == 101  # and the namespace's meta hash
    deleted = await delete_namespace(
        "amqp://guest:guest@127.0.0.1:5672/", redis_cluster.url(), store_names.namespace
    )
    assert (deleted.redis_keys, deleted.redis_keys_left) == (101, 0)


async def test_a_cluster_url_naming_a_plain_server_or_nothing_is_one_clear_error() -> None:
    names = Names("cprobe")
    plain = RedisEventStore.from_url("redis+cluster://127.0.0.1:6379", names)
    try:
        with pytest.raises(ConfigurationError, match="not in cluster mode"):
            await plain.ping()
    finally:
        await plain.close()
    nothing = RedisEventStore.from_url("redis+cluster://127.0.0.1:1,127.0.0.1:2", names)
    try:
        with pytest.raises(ServiceUnavailableError, match="not reachable"):
            await nothing.ping()
    finally:
        await nothing.close()


async def test_the_reconciler_lease_is_taken_fenced_and_given_back_on_a_cluster(
    cluster_store: RedisEventStore, store_names: Names
) -> None:
    first = Lease(cluster_store.client, store_names, owner="a", ttl_ms=5000)
    second = Lease(cluster_store.client, store_names, owner="b", ttl_ms=5000)
    assert await first.acquire() and not await second.acquire()
    assert await first.check()
    await first.release()
    assert await second.acquire()
    assert second.holding is not None and first.holding is None
    assert second.holding.token > 1  # the fence only grows


async def test_keyless_commands_of_a_cluster_client_made_from_a_url_work(
    redis_cluster: RedisClusterNodes,
) -> None:
    client = redis_client(redis_cluster.url(query="socket_timeout=5"))
    try:
        assert await client.ping()
        seconds, _ = await client.time()
        assert abs(seconds - time.time()) < 60
    finally:
        await client.aclose()
