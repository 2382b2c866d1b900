"""Retention on the real servers: the janitor, `runs delete`, and all that meets a removed run.

A removed run must look "not found" to every reader and writer, never half
there and never an error that repeats: a late activation, a late step message,
a timer, a result() waiter, the reconciler, `runs verify`, `runs list`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any

import pytest
import redis.asyncio as aioredis
from ledgerflow.broker import Activation
from ledgerflow.broker.messages import step_message
from ledgerflow.eventlog.derived import verify_run
from ledgerflow.eventlog.events import EventType
from ledgerflow.eventlog.records import StepCreated
from ledgerflow.eventlog.store import RemoveOutcome
from ledgerflow.eventlog.timers import Timer, TimerKind
from ledgerflow.scheduler.janitor import Janitor
from ledgerflow.scheduler.reconciler import Reconciler

import ledgerflow as lf
from ledgerflow.ops.lease import Lease
from ledgerflow.ops.metrics import GaugeSampler, sample
from tests.apps import arith, retained, waiting
from tests.processes import cli
from tests.servers import Servers

pytestmark = pytest.mark.integration


async def gone(backends: Any, redis_client: aioredis.Redis, run_id: str) -> bool:
    """Nothing of the run is left: no key under its hash tag, no index entry."""
    keys = [k async for k in redis_client.scan_iter(match=f"*{{{run_id}}}*")]
    names = backends.names
    scores = [
        await redis_client.zscore(key, run_id)
        for key in (
            names.runs_for(run_id),
            names.active_for(run_id),
            names.finished_for(run_id),
            names.expire_for(run_id),
        )
    ]
    return keys == [] and scores == [None] * 4


async def until(predicate: Any, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def test_a_workflows_retention_removes_its_finished_runs(
    running: lf.Client, backends: Any, redis_client: aioredis.Redis
) -> None:
    run = await running.start(retained.retained, 4)
    assert await run.result(timeout=30) == 8
    status = await backends.store.status(run.run_id)
    assert status["ret"] == "1000" and "end" in status
    janitor = Janitor(backends.store, observers=[])
    assert (await janitor.sweep()).removed == 0  # not due yet
    await asyncio.sleep(1.1)
    report = await janitor.sweep()
    assert report.removed == 1 and report.bytes_removed > 0
    assert await gone(backends, redis_client, run.run_id)
    with pytest.raises(lf.RunNotFoundError):  # a newcomer asking for the result
        await run.result(timeout=5)
    assert run.run_id not in {r.run_id for r in await backends.store.list_runs(limit=1000)}


async def test_a_child_keeps_its_own_workflows_retention(running: lf.Client, backends: Any) -> None:
    parent = await running.start(retained.retained_parent, 2)
    assert await parent.result(timeout=30) == 5
    events = await parent.events()
    child_id = next(
        e.record.child.run_id
        for e in events
        if isinstance(e.record, StepCreated) and e.record.child is not None
    )
    assert (await backends.store.status(parent.run_id))["ret"] == str(3_600_000)
    assert (await backends.store.status(child_id))["ret"] == "1000"


async def test_the_namespace_default_applies_to_runs_without_their_own(
    running: lf.Client, backends: Any, redis_client: aioredis.Redis
) -> None:
    done = await running.start(arith.total, 2)
    await done.result(timeout=30)
    sleeping = await running.start(waiting.sleep_then_step, 60.0)  # live, never touched
    await asyncio.sleep(1.1)
    assert (await Janitor(backends.store, observers=[]).sweep()).removed == 0  # no default
    report = await Janitor(backends.store, default_retention_ms=1000, observers=[]).sweep()
    assert report.removed == 1
    assert await gone(backends, redis_client, done.run_id)
    assert await backends.store.exists(sleeping.run_id)
    await running.cancel(sleeping.run_id)


async def test_the_reconciler_daemon_runs_the_janitor_under_its_lease(
    running: lf.Client, backends: Any, redis_client: aioredis.Redis
) -> None:
    run = await running.start(retained.retained, 1)
    await run.result(timeout=30)
    lease = Lease(backends.store.client, backends.names, owner="janitor-test", ttl_ms=2000)
    janitor = Janitor(backends.store, observers=[])
    rec = Reconciler(
        backends.store, backends.broker, lease, interval=0.2, observers=[], janitor=janitor
    )
    task = asyncio.create_task(rec.run())
    try:
        await until(lambda: gone(backends, redis_client, run.run_id))
    finally:
        rec.stop()
        await task


async def test_late_messages_timers_and_sweeps_meet_a_removed_run_quietly(
    running: lf.Client, backends: Any, redis_client: aioredis.Redis
) -> None:
    """An activation, a step message and a timer of a removed run: dropped, never dead-lettered."""
    names = backends.names
    run = await running.start(arith.total, 2)
    await run.result(timeout=30)
    events = await run.events()
    created = next(e for e in events if isinstance(e.record, StepCreated))
    assert isinstance(created.record, StepCreated)
    assert await backends.store.remove_run(run.run_id) is RemoveOutcome.REMOVED

    await backends.broker.publish_activation(Activation(run_id=run.run_id, reason="late"))
    late_step = step_message(run.run_id, created.corr, created.record, attempt=2)
    await backends.broker.publish_step(late_step)
    timer = Timer(TimerKind.WAIT, run.run_id, "s99")
    await backends.store.add_timer(timer, delay_ms=0)
    # A stale active-index entry, as if the run had been listed just before removal.
    await redis_client.zadd(names.active_for(run.run_id), {run.run_id: 1})

    async def drained() -> bool:
        depths = [
            await backends.broker.queue_depth(q)
            for q in (names.runs_queue, names.step_queue(), names.dead_queue)
        ]
        return depths == [0, 0, 0] and await backends.store.pending_timers(run.run_id) == []

    await until(drained)
    await asyncio.sleep(0.5)
    assert await backends.broker.queue_depth(names.dead_queue) == 0
    assert await backends.store.read(run.run_id) == []
    assert await backends.store.status(run.run_id) == {}  # nothing written back by anyone

    rec = Reconciler(backends.store, backends.broker, None, stale_after=0.0, observers=[])
    report = await rec.sweep()
    assert report.recoveries == {} and report.runs_skipped == 0
    await redis_client.zrem(names.active_for(run.run_id), run.run_id)


async def test_a_waiter_whose_run_disappears_gets_not_found(
    running: lf.Client, backends: Any, redis_client: aioredis.Redis
) -> None:
    """A result() waiter blocked on a run whose keys vanish sees "not found", not a hang."""
    run = await running.start(waiting.sleep_then_step, 60.0)
    await until(lambda: _has(backends, run.run_id, EventType.WAIT_CREATED))
    waiter = asyncio.create_task(run.result(timeout=30))
    await asyncio.sleep(0.3)
    # Removal refuses a live run; stand in for a removal the waiter did not see coming.
    names = backends.names
    await redis_client.delete(names.stream(run.run_id), names.status(run.run_id))
    with pytest.raises(lf.RunNotFoundError):
        await waiter
    await redis_client.zrem(names.active_for(run.run_id), run.run_id)
    with contextlib.suppress(Exception):
        await redis_client.delete(names.timer_for(run.run_id))


async def _has(backends: Any, run_id: str, kind: EventType) -> bool:
    return any(e.type is kind for e in await backends.store.read(run_id))


async def test_verify_never_reports_a_removed_run(
    servers: Servers, running: lf.Client, backends: Any, redis_client: aioredis.Redis
) -> None:
    run = await running.start(arith.total, 2)
    await run.result(timeout=30)
    assert await verify_run(backends.store, run.run_id) == []
    assert await backends.store.remove_run(run.run_id) is RemoveOutcome.REMOVED
    # Listed as active just before it was removed: --all leaves it out.
    await redis_client.zadd(backends.names.active_for(run.run_id), {run.run_id: 1})
    ns = backends.names.namespace
    clean = await asyncio.to_thread(cli, servers, ns, "runs", "verify", "--all", "--json")
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert json.loads(clean.stdout)["problems"] == {}
    await redis_client.zrem(backends.names.active_for(run.run_id), run.run_id)


async def test_runs_delete_from_the_cli(
    servers: Servers, running: lf.Client, backends: Any, redis_client: aioredis.Redis
) -> None:
    ns = backends.names.namespace
    done = await running.start(arith.total, 2)
    await done.result(timeout=30)
    failed = await running.start(arith.failing, "boom")
    with pytest.raises(lf.WorkflowFailedError):
        await failed.result(timeout=30)
    sleeping = await running.start(waiting.sleep_then_step, 60.0)

    def ledgerflow(*args: str) -> Any:
        return asyncio.to_thread(cli, servers, ns, "runs", "delete", *args)

    refused = await ledgerflow(done.run_id)
    assert refused.returncode == 2 and "--yes" in refused.stderr
    assert await backends.store.exists(done.run_id)
    both = await ledgerflow(done.run_id, "--status", "failed", "--yes")
    assert both.returncode == 2

    live = await ledgerflow(sleeping.run_id, done.run_id, "--yes", "--json")
    assert live.returncode == 1, live.stdout + live.stderr
    body = json.loads(live.stdout)
    assert body == {"removed": [done.run_id], "refused": {sleeping.run_id: "live"}, "not_found": []}
    assert await gone(backends, redis_client, done.run_id)
    assert await backends.store.exists(sleeping.run_id)

    missing = await ledgerflow("no-such-run", "--yes")
    assert missing.returncode == 4 and "no-such-run: no such run" in missing.stderr

    not_yet = await ledgerflow("--status", "failed", "--before", "1h", "--yes", "--json")
    assert not_yet.returncode == 0 and json.loads(not_yet.stdout)["removed"] == []
    by_status = await ledgerflow("--status", "failed", "--before", "2099-01-01", "--yes")
    assert by_status.returncode == 0, by_status.stdout + by_status.stderr
    assert "1 deleted, 0 refused, 0 not found" in by_status.stdout
    assert await gone(backends, redis_client, failed.run_id)
    assert await backends.store.exists(sleeping.run_id)  # a selection never picks a live run
    await running.cancel(sleeping.run_id)


async def test_runs_pending_removal_is_a_sampled_gauge(running: lf.Client, backends: Any) -> None:
    run = await running.start(arith.total, 1)
    await run.result(timeout=30)
    await asyncio.sleep(0.05)
    sampler = GaugeSampler(backends.store, retention_ms=None)
    await sampler.sample_once()
    assert sample("ledgerflow_runs_pending_removal") == 0  # no default: nothing is due
    sampler = GaugeSampler(backends.store, retention_ms=1)
    await sampler.sample_once()
    assert sample("ledgerflow_runs_pending_removal") == 1


def test_a_bad_retention_is_bad_usage(servers: Servers, namespace: str) -> None:
    bad = cli(servers, namespace, "reconciler", "--retention", "forever")
    assert bad.returncode == 2 and "--retention" in bad.stderr
    env_bad = cli(servers, namespace, "reconciler", env={"LEDGERFLOW_RETENTION": "0s"})
    assert env_bad.returncode == 2 and "LEDGERFLOW_RETENTION" in env_bad.stderr
