"""lf.Concurrency across worker processes on real servers.

Two worker processes (16 worker slots between them) run 50 runs of one key under a
limit of 2: the steps' own count in Redis never sees more than 2 at once, while
runs of another key, started after the 50, are not held up behind them (their
steps take free slots at once; the waiting ones hold no worker slot). Then a
worker is killed while it holds slots: its leases run out and the reconciler lets
the waiters in, so every run still completes.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import json
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from ledgerflow.eventlog.events import EventType

import ledgerflow as lf
from ledgerflow.ops import metrics
from ledgerflow.testing.fleet import Fleet, cli_env
from tests.apps import limits
from tests.apps import limits_shared as ls
from tests.processes import ROOT, cli
from tests.servers import Servers

pytestmark = pytest.mark.integration

APP = "tests.apps.limits_shared"


def fleet_for(servers: Servers, namespace: str, tmp_path: Path, *, lease_ms: int) -> Fleet:
    env = cli_env(servers.amqp_url, servers.redis_url, namespace, pythonpath=ROOT)
    env["LEDGERFLOW_SLOT_LEASE_MS"] = str(lease_ms)
    fleet = Fleet(env, tmp_path, cwd=ROOT, stop_timeout=20.0)
    for _ in range(2):
        fleet.add("worker", ["worker", APP, "--concurrency", "8"])
    fleet.add("scheduler", ["scheduler", APP])
    return fleet


async def test_a_limit_of_two_holds_across_two_workers_and_other_keys_go_by(
    servers: Servers, backends: Any, redis_client: aioredis.Redis, tmp_path: Path
) -> None:
    names = backends.names
    fleet = fleet_for(servers, names.namespace, tmp_path, lease_ms=60_000)
    fleet.start_all()
    try:
        await fleet.wait_until_consuming(
            servers.amqp_url, {names.step_queue(): 2, names.runs_queue: 1}
        )
        client = lf.Client(backends.store, backends.broker)
        busy = [await client.start(ls.shared_one, "busy", i, 0.1) for i in range(50)]
        other = [await client.start(ls.shared_one, "other", i, 0.1) for i in range(4)]
        assert [await r.result(timeout=120) for r in busy] == [f"busy-{i}" for i in range(50)]
        assert [await r.result(timeout=120) for r in other] == [f"other-{i}" for i in range(4)]
        assert fleet.reap() == []
    finally:
        fleet.stop_all()
    _, busy_peak, finished = ls.keys(names.namespace, "busy")
    _, other_peak, _ = ls.keys(names.namespace, "other")
    assert int(await redis_client.get(busy_peak)) == 2  # reached, never passed
    assert int(await redis_client.get(other_peak)) <= 2
    order = [t.decode() for t in await redis_client.lrange(finished, 0, -1)]
    assert len(order) == 54
    # Started after all 50, the other key's runs finished long before the busy key's.
    assert max(i for i, t in enumerate(order) if t == "other") < 30, order
    assert await backends.store.slot_uses() == []


async def test_slots_of_a_killed_worker_run_out_and_the_waiters_get_in(
    servers: Servers, backends: Any, tmp_path: Path
) -> None:
    names = backends.names
    fleet = fleet_for(servers, names.namespace, tmp_path, lease_ms=5_000)
    fleet.add("reconciler", ["reconciler", "--stale-after", "2", "--interval", "1"])
    fleet.start_all()
    try:
        await fleet.wait_until_consuming(
            servers.amqp_url, {names.step_queue(): 2, names.runs_queue: 1}
        )
        client = lf.Client(backends.store, backends.broker)
        runs = [await client.start(ls.shared_one, "k", i, 2.0) for i in range(6)]
        # Wait until both slots are held (two steps running), then kill every worker
        # holding one: their steps never finish and never release.
        for _ in range(300):
            uses = await backends.store.slot_uses()
            if uses and uses[0].holding == 2 and uses[0].waiting >= 1:
                break
            await asyncio.sleep(0.1)
        else:
            pytest.fail(f"the slots were never both held: {uses}")
        for proc in fleet.of("worker"):
            await fleet.kill_and_restart(proc, 0.5)
        results = [await r.result(timeout=180) for r in runs]
        assert results == [f"k-{i}" for i in range(6)]
    finally:
        fleet.stop_all()


async def test_limits_are_visible_in_the_cli_and_the_metrics(
    servers: Servers, backends: Any, names: Any
) -> None:
    store = backends.store
    for i in range(3):
        await store.acquire_slot("payments", "tenant\x1b[2J", f"r{i}|s1", 1, 60_000, b"m")
    await store.acquire_slot("payments", "quiet", "q|s1", 1, 60_000, b"m")
    shown = await asyncio.to_thread(cli, servers, names.namespace, "limits")
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[0].split() == ["LIMIT", "KEY", "IN", "USE", "WAITING"]
    assert "tenant\\x1b[2J" in shown.stdout and "\x1b" not in shown.stdout  # escaped
    as_json = await asyncio.to_thread(cli, servers, names.namespace, "limits", "--json")
    assert sorted((u["key"], u["holding"], u["waiting"]) for u in json.loads(as_json.stdout)) == [
        ("quiet", 1, 0),
        ("tenant\x1b[2J", 1, 2),
    ]
    sampler = metrics.GaugeSampler(store)
    await sampler.sample_once()
    assert (
        metrics.sample(
            "ledgerflow_concurrency_waiting", {"limit": "payments", "key": "tenant\x1b[2J"}
        )
        == 2
    )
    assert (
        metrics.sample("ledgerflow_concurrency_slots_in_use", {"limit": "payments", "key": "quiet"})
        == 1
    )


async def test_a_shared_rate_of_ten_a_second_holds_over_a_hundred_calls_on_two_workers(
    servers: Servers, backends: Any, redis_client: aioredis.Redis, tmp_path: Path
) -> None:
    """100 calls of two steps sharing one named limit, started at once, start at 10 a
    second (measured from their own start times on Redis's clock, within 3 %), and no
    second holds more than the limit allows."""
    names = backends.names
    fleet = fleet_for(servers, names.namespace, tmp_path, lease_ms=60_000)
    fleet.start_all()
    try:
        await fleet.wait_until_consuming(
            servers.amqp_url, {names.step_queue(): 2, names.runs_queue: 1}
        )
        client = lf.Client(backends.store, backends.broker)
        runs = [await client.start(ls.pay, i) for i in range(100)]
        results = [await r.result(timeout=120) for r in runs]
        assert results == [i if i % 2 == 0 else -i for i in range(100)]
        assert fleet.reap() == []
    finally:
        fleet.stop_all()
    starts = sorted(
        int(t) for t in await redis_client.lrange(f"{names.namespace}:test:calls", 0, -1)
    )
    assert len(starts) == 100
    # The calls reach the limit over the first half second (their runs are being
    # started); from the tenth on, every one of them is waiting its turn.
    rate = 89 / ((starts[-1] - starts[10]) / 1000)
    assert 9.7 <= rate <= 10.3, (rate, starts)
    # No second holds many more than 10: a turn's wake-up may come late (the timer loop,
    # RabbitMQ and a worker between) and start next to the one after it, never earlier.
    busiest = max(bisect.bisect_left(starts, t + 1000) - i for i, t in enumerate(starts))
    assert busiest <= 12, (busiest, starts)


async def test_held_back_steps_are_counted(running: lf.Client) -> None:
    """In-process workers: a step parked for its slot counts in ledgerflow_steps_held_back."""
    labels = {"step": "call_api", "why": "concurrency"}
    before = metrics.sample("ledgerflow_steps_held_back_total", labels)
    runs = [await running.start(limits.one_call, "held", i, 0.3) for i in range(4)]
    assert [await r.result(timeout=60) for r in runs] == [f"held-{i}" for i in range(4)]
    assert metrics.sample("ledgerflow_steps_held_back_total", labels) - before >= 2


async def test_a_workflow_limit_runs_one_key_one_at_a_time_on_real_servers(
    running: lf.Client,
) -> None:
    runs = [await running.start(limits.tenant_job, "acme", 0.3) for _ in range(4)]
    other = await running.start(limits.tenant_job, "globex", 0.0)
    assert await other.result(timeout=30) == "globex"
    assert [await r.result(timeout=60) for r in runs] == ["acme"] * 4
    spans = []
    for run in runs:
        events = await running.events(run.run_id)
        started = next(e.ts for e in events if e.type is EventType.RUN_STARTED)
        spans.append((started, events[-1].ts))
    spans.sort()
    assert all(b[0] >= a[1] for a, b in itertools.pairwise(spans)), spans
