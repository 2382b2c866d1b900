"""The reconciler's sweep reaches every stale run, and backs off what does not help.

Runs waiting on hooks for days are stale by definition (no progress); a sweep
that re-read the oldest few hundred of them every time would never reach a run
that lost a message behind them. And a recovery that cannot help (an
activation for a workflow no scheduler knows) must not flood the dead-letter
queue every few seconds.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from ledgerflow.eventlog.events import EventType, NewEvent
from ledgerflow.eventlog.names import shard_of
from ledgerflow.scheduler.reconciler import BATCH, Reconciler
from structlog.testing import capture_logs

pytestmark = pytest.mark.integration


def ids_in_shard(shard: int, shards: int, count: int, prefix: str) -> list[str]:
    found: list[str] = []
    n = 0
    while len(found) < count:
        run_id = f"{prefix}-{n}"
        if shard_of(run_id, shards) == shard:
            found.append(run_id)
        n += 1
    return found


async def create_waiting_run(store: Any, run_id: str) -> None:
    """A started run waiting on a hook: stale, with nothing missing."""
    await store.append(
        run_id, [NewEvent.of(EventType.RUN_CREATED, data={"workflow": "w"}, workflow="w")]
    )
    await store.append(run_id, [NewEvent.of(EventType.RUN_STARTED)])
    await store.append(
        run_id,
        [
            NewEvent.of(
                EventType.HOOK_CREATED, "s1", {"token": f"tok-{run_id}"}, token=f"tok-{run_id}"
            )
        ],
    )


async def test_a_lost_step_behind_many_waiting_runs_is_still_recovered(backends: Any) -> None:
    store, broker, names = backends.store, backends.broker, backends.names
    waiting = ids_in_shard(3, names.shards, BATCH + 50, "waiting")
    for run_id in waiting:
        await create_waiting_run(store, run_id)
    await asyncio.sleep(0.05)
    (lost,) = ids_in_shard(3, names.shards, 1, "lost")
    await store.append(
        lost, [NewEvent.of(EventType.RUN_CREATED, data={"workflow": "w"}, workflow="w")]
    )
    await store.append(lost, [NewEvent.of(EventType.RUN_STARTED)])
    # step_created recorded, its message never published (the scheduler died in between)
    await store.append(
        lost,
        [
            NewEvent.of(
                EventType.STEP_CREATED,
                "s1",
                {"name": "some_step", "queue": "default", "args": b"\x92\x90\x80"},
            )
        ],
    )
    await asyncio.sleep(0.3)
    reconciler = Reconciler(store, broker, None, stale_after=0.2)
    report = await reconciler.sweep()
    assert report.runs_checked >= len(waiting) + 1
    assert report.recoveries["step never started"] == 1
    assert await broker.queue_depth(names.step_queue()) == 1


async def test_a_recovery_that_does_not_help_backs_off(backends: Any) -> None:
    store, broker, names = backends.store, backends.broker, backends.names
    run_id = "unknown-workflow-run"
    await store.append(
        run_id,
        [NewEvent.of(EventType.RUN_CREATED, data={"workflow": "nobody"}, workflow="nobody")],
    )
    await asyncio.sleep(0.3)
    reconciler = Reconciler(store, broker, None, stale_after=0.2, max_recheck=0.4)
    first = await reconciler.sweep()
    again = await reconciler.sweep()  # at once: the run was just looked at
    assert first.recoveries["run never started"] == 1
    assert again.recoveries["run never started"] == 0
    assert await broker.queue_depth(names.runs_queue) == 1
    sent = 1
    with capture_logs() as logs:
        for _ in range(5):
            await asyncio.sleep(0.45)  # past the longest delay, so every sweep is due
            sent += (await reconciler.sweep()).recoveries["run never started"]
    assert sent == 6
    assert await broker.queue_depth(names.runs_queue) == 6
    warnings = [e for e in logs if "keeps repeating" in e["event"]]
    assert warnings and warnings[-1]["run_id"] == run_id


async def test_progress_resets_the_backoff(backends: Any) -> None:
    store, broker = backends.store, backends.broker
    run_id = "waits-then-moves"
    await create_waiting_run(store, run_id)
    await asyncio.sleep(0.3)
    reconciler = Reconciler(store, broker, None, stale_after=0.2, max_recheck=60)
    assert (await reconciler.sweep()).runs_checked == 1
    await asyncio.sleep(0.3)
    assert (await reconciler.sweep()).runs_checked == 1  # checked again: delay was 0.2 s
    await asyncio.sleep(0.3)
    assert (await reconciler.sweep()).runs_checked == 0  # now 0.4 s: not due yet
    # progress: an append scores the run now, so it is due again after stale_after
    await store.append(run_id, [NewEvent.of(EventType.HOOK_RECEIVED, "s1", {"payload": 1})])
    await asyncio.sleep(0.3)
    report = await reconciler.sweep()
    assert report.runs_checked == 1
    assert report.recoveries["outcome not acted on"] == 1


async def test_a_run_with_a_step_on_a_worker_is_looked_at_without_backoff(backends: Any) -> None:
    """Its worker dying is the one thing that goes wrong with no append: keep looking."""
    store, broker, names = backends.store, backends.broker, backends.names
    await store.mark_alive("host:7", 60_000)
    run_id = "long-step"
    await store.append(
        run_id, [NewEvent.of(EventType.RUN_CREATED, data={"workflow": "w"}, workflow="w")]
    )
    await store.append(run_id, [NewEvent.of(EventType.RUN_STARTED)])
    step = {"name": "some_step", "queue": "default", "args": b"\x92\x90\x80"}
    await store.append(run_id, [NewEvent.of(EventType.STEP_CREATED, "s1", step)])
    await store.append(
        run_id, [NewEvent.of(EventType.STEP_STARTED, "s1", {"worker": "host:7"}, attempt=1)]
    )
    reconciler = Reconciler(store, broker, None, stale_after=0.2, max_recheck=60)
    for _ in range(4):
        await asyncio.sleep(0.3)
        report = await reconciler.sweep()
        assert report.runs_checked == 1  # no doubling: every stale_after
        assert not report.recoveries  # a long step of a live worker is left alone
    await store.mark_gone("host:7")
    await asyncio.sleep(0.3)
    report = await reconciler.sweep()
    assert report.recoveries["step's worker is gone"] == 1
    assert await broker.queue_depth(names.step_queue()) == 1
