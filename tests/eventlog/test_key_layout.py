"""The namespace's key layout on a real Redis: recorded once, refused when old, migrated.

``tests/data/legacy_layout.json`` is a namespace as ledgerflow stored it before the
Redis Cluster key layout (layout 1), dumped from real runs of that version: two
finished runs, a failed one, one with offloaded values, a parent and its child
with a retention of their own, a run asleep and a run waiting on a hook.
"""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from ledgerflow.eventlog import statushash as sh
from ledgerflow.eventlog.derived import verify_run
from ledgerflow.eventlog.errors import (
    ConfigurationError,
    HookTokenConflictError,
    RunClosedError,
)
from ledgerflow.eventlog.events import NewEvent
from ledgerflow.eventlog.kinds import EventType as E
from ledgerflow.eventlog.names import LAYOUT_VERSION, LegacyNames, Names
from ledgerflow.eventlog.redis_store import RedisEventStore
from ledgerflow.eventlog.settings import Settings
from ledgerflow.scheduler.embedded import serving
from ledgerflow.worker.backend import connect

from tests.apps import arith, large, retained, waiting  # noqa: F401  (they register workflows)
from tests.eventlog.test_store_conformance import append_ok, ev, new_run_id, started_run
from tests.servers import Servers

LEGACY = Path(__file__).parent.parent / "data" / "legacy_layout.json"
LEGACY_RUNS = {"done-1", "failed-1", "big-1", "kept-1", "kept-1.s1", "sleeping-1", "hooked-1"}

pytestmark = pytest.mark.integration


def _b(text: str) -> bytes:
    return base64.b64decode(text)


async def load_legacy(client: aioredis.Redis, namespace: str) -> None:
    """Write the saved layout-1 namespace under ``namespace``."""
    dump = json.loads(LEGACY.read_text())
    for suffix, item in dump["keys"].items():
        key, kind, value = f"{namespace}:{suffix}", item["type"], item["value"]
        if kind == "stream":
            for entry_id, fields in value:
                await client.xadd(key, {_b(f): _b(v) for f, v in fields.items()}, id=entry_id)
        elif kind == "hash":
            await client.hset(key, mapping={_b(f): _b(v) for f, v in value.items()})
        elif kind == "zset":
            await client.zadd(key, {_b(m): score for m, score in value})
        elif kind == "set":
            await client.sadd(key, *(_b(m) for m in value))
        else:
            await client.set(key, _b(value))


async def test_a_new_namespace_records_its_layout_once(
    redis_client: aioredis.Redis, names: Names
) -> None:
    store = RedisEventStore(redis_client, names)
    assert (await store.adopt_layout()).shards == 16
    meta = await redis_client.hgetall(names.meta())
    assert meta == {b"layout": str(LAYOUT_VERSION).encode(), b"shards": b"16"}
    # What is recorded wins over what a process would choose (another shard count).
    await redis_client.hset(names.meta(), "shards", 4)
    other = RedisEventStore(redis_client, names)
    assert (await other.adopt_layout()).shards == 4
    run_id = new_run_id()
    await started_run(other, run_id)
    assert await redis_client.exists(Names(names.namespace, 4).stream(run_id))
    assert not await redis_client.exists(names.stream(run_id))


@pytest.mark.parametrize("meta", [{"layout": "1", "shards": "16"}, {"layout": "2", "shards": "x"}])
async def test_a_layout_this_version_does_not_know_is_refused(
    redis_client: aioredis.Redis, names: Names, meta: dict[str, str]
) -> None:
    await redis_client.hset(names.meta(), mapping=meta)
    with pytest.raises(ConfigurationError, match="layout"):
        await RedisEventStore(redis_client, names).adopt_layout()


async def test_old_layout_is_refused_until_migrated_then_everything_works(
    servers: Servers, redis_client: aioredis.Redis, names: Names, amqp_cleanup: list[str]
) -> None:
    await load_legacy(redis_client, names.namespace)
    settings = Settings(servers.amqp_url, servers.redis_url, names.namespace)
    with pytest.raises(ConfigurationError, match="ledgerflow migrate"):
        async with connect(settings):
            pass

    report = await migrate_cli(servers, names, "--yes", "--json")
    assert report["runs"] == len(LEGACY_RUNS) and report["skipped"] == {}
    assert report["deleted_indexes"] > 0
    assert not await RedisEventStore(redis_client, names).legacy_keys()
    left = [k async for k in redis_client.scan_iter(match=f"{names.namespace}:run:{{*")]
    assert left == []
    again = await migrate_cli(servers, names, "--yes", "--json")
    assert again["already_migrated"] is True

    async with connect(settings) as backends:
        store = backends.store
        listed = {r.run_id for r in await store.list_runs(limit=100)}
        assert listed == LEGACY_RUNS
        for run_id in sorted(LEGACY_RUNS):
            assert await verify_run(store, run_id) == [], run_id
        assert await store.hook_owner("approve-o1") == ("hooked-1", "s1")
        async with serving(store, backends.broker) as client:
            assert await client.result("done-1", timeout=10) == arith.expected_total(3)
            big = await client.result("big-1", timeout=10)
            assert big["facts"]["size"] == 100_000 and len(big["echo"]) == 100_000
            assert await client.result("kept-1", timeout=10) == 5
            # The live runs go on: the sleep's timer fires, the hook is resumed.
            assert await client.result("sleeping-1", timeout=30) == "marked after sleep"
            await client.resume_hook("approve-o1", {"ok": True})
            assert await client.result("hooked-1", timeout=30) == {"ok": True}
        assert {r.run_id for r in await store.list_runs(status="running", limit=10)} == set()


def migrate_run(servers: Servers, names: Names, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ledgerflow", "--namespace", names.namespace, "migrate", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=cli_env(servers),
    )


async def migrate_cli(servers: Servers, names: Names, *args: str) -> dict[str, Any]:
    done = await asyncio.to_thread(migrate_run, servers, names, *args)
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def cli_env(servers: Servers) -> dict[str, str]:
    import os

    return {
        **os.environ,
        "LEDGERFLOW_AMQP_URL": servers.amqp_url,
        "LEDGERFLOW_REDIS_URL": servers.redis_url,
    }


async def test_migrate_refuses_while_workers_are_alive(
    servers: Servers, redis_client: aioredis.Redis, names: Names
) -> None:
    await load_legacy(redis_client, names.namespace)
    await redis_client.set(names.worker_presence("host:1"), b"1", px=60_000)
    done = await asyncio.to_thread(migrate_run, servers, names, "--yes")
    assert done.returncode == 2
    assert "alive" in done.stderr
    assert await RedisEventStore(redis_client, names).legacy_keys()  # nothing moved
    assert await redis_client.exists(LegacyNames(names.namespace).status("done-1"))


# --- the hook-token registry beside the append ---------------------------------------


def hook(corr: str, token: str) -> NewEvent:
    return NewEvent.of(E.HOOK_CREATED, corr, {"token": token}, token=token)


async def test_a_registry_entry_left_by_a_crash_is_never_followed_and_is_taken_over(
    redis_client: aioredis.Redis, names: Names
) -> None:
    store = RedisEventStore(redis_client, names)
    old, new = new_run_id(), new_run_id()
    await started_run(store, old)
    await append_ok(store, old, [hook("h1", "tok")])
    # The disposal is recorded, the release is lost (the process died in between).
    await redis_client.hset(
        names.status(old), sh.entity_field("h1"), sh.entity_value("hook", "disposed")
    )
    assert await redis_client.hget(names.hook_tokens_for("tok"), "tok") == f"{old}|h1".encode()
    assert await store.hook_owner("tok") is None
    assert await redis_client.hget(names.hook_tokens_for("tok"), "tok") is None
    await redis_client.hset(names.hook_tokens_for("tok"), "tok", f"{old}|h1")
    await started_run(store, new)
    await append_ok(store, new, [hook("h9", "tok")])
    assert await store.hook_owner("tok") == (new, "h9")


async def test_a_claim_whose_append_is_in_flight_holds_the_token(
    redis_client: aioredis.Redis, names: Names
) -> None:
    store = RedisEventStore(redis_client, names)
    first, second = new_run_id(), new_run_id()
    await started_run(store, first)
    await started_run(store, second)
    # The first run's appender claimed the token and has not yet recorded its hook.
    await redis_client.hset(names.hook_tokens_for("tok"), "tok", f"{first}|h1")
    with pytest.raises(HookTokenConflictError):
        await store.append(second, [hook("h1", "tok")])
    assert await store.hook_owner("tok") is None  # nothing to resume yet
    await append_ok(store, first, [hook("h1", "tok")])  # its retry: the claim is its own
    assert await store.hook_owner("tok") == (first, "h1")
    await append_ok(store, first, [ev(E.HOOK_DISPOSED, "h1")])
    assert await redis_client.hget(names.hook_tokens_for("tok"), "tok") is None
    await append_ok(store, second, [hook("h1", "tok")])
    assert await store.hook_owner("tok") == (second, "h1")


async def test_an_append_the_script_refuses_gives_its_claim_back(
    redis_client: aioredis.Redis, names: Names
) -> None:
    store = RedisEventStore(redis_client, names)
    run_id = new_run_id()
    await started_run(store, run_id)
    await append_ok(store, run_id, [ev(E.RUN_CANCELLED, data={"reason": "test"})])
    with pytest.raises(RunClosedError):
        await store.append(run_id, [hook("h1", "tok")])
    assert await redis_client.hget(names.hook_tokens_for("tok"), "tok") is None
