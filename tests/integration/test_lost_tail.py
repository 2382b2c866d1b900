"""A run cached by a scheduler whose log then loses its newest entries, as after a failover.

Redis replicates asynchronously: a master killed before its replica received the
last appends leaves the promoted replica with an older log. The scheduler's cached
instance has seen (and written) entries that are gone. Here that is reproduced on
one server: the run's stream and status hash are dumped, the run moves on, and
the dump is restored over it (every entry after the dump vanishes together with
the hash fields it set, exactly what a promoted replica holds). The scheduler
must notice that its instance is ahead of the log and replay the log as it is,
or the run either waits forever for a step only the lost entries created, or
fails with a replay divergence.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis.asyncio as aioredis
from ledgerflow.eventlog import presence
from ledgerflow.eventlog.events import EventType, NewEvent
from ledgerflow.scheduler.reconciler import Reconciler
from ledgerflow.scheduler.service import Scheduler

import ledgerflow as lf
from ledgerflow.ops.checker import check_log
from ledgerflow.ops.lease import Lease
from tests.apps import arith

pytestmark = pytest.mark.integration
E = EventType


async def complete(backends: Any, run_id: str, corr: str, result: int) -> None:
    """What a worker records for one attempt of a step."""
    await backends.store.append(
        run_id,
        [
            NewEvent.of(E.STEP_STARTED, corr, {"worker": "test"}, attempt=1),
            NewEvent.of(E.STEP_COMPLETED, corr, {"result": result}, attempt=1),
        ],
    )


async def s1_created(
    backends: Any, redis_client: aioredis.Redis
) -> tuple[Scheduler, lf.RunHandle, list[str], list[Any]]:
    """A run of arith.total(1) replayed by hand up to step_created s1, and a dump of it.

    Returns the scheduler (not started: tests replay by hand), the run, its stream and
    status keys, and their dump: what a replica that stopped there would hold.
    """
    scheduler = Scheduler(backends.store, backends.broker)
    client = lf.Client(backends.store, backends.broker)
    run = await client.start(arith.total, 1)  # s1 = add(0, 0), then s2 = add(0, 0)
    await scheduler.replay_run(run.run_id)  # run_started, step_created s1
    keys = [backends.names.stream(run.run_id), backends.names.status(run.run_id)]
    return scheduler, run, keys, [await redis_client.dump(key) for key in keys]


async def test_a_scheduler_whose_cached_run_is_ahead_of_its_log_replays_the_log(
    backends: Any, redis_client: aioredis.Redis
) -> None:
    store = backends.store
    scheduler, run, keys, snapshot = await s1_created(backends, redis_client)

    await complete(backends, run.run_id, "s1", 0)
    await scheduler.replay_run(run.run_id)  # the cached instance creates s2
    assert [e.corr for e in await store.read(run.run_id) if e.type is E.STEP_CREATED] == [
        "s1",
        "s2",
    ]
    for key, dumped in zip(keys, snapshot, strict=True):  # the failover: back to the dump
        await redis_client.restore(key, 0, dumped, replace=True)

    await complete(backends, run.run_id, "s1", 0)  # the step's redelivered attempt
    await scheduler.replay_run(run.run_id)
    created = [e.corr for e in await store.read(run.run_id) if e.type is E.STEP_CREATED]
    assert created == ["s1", "s2"], "s2 was not created again on the log as it is now"
    await complete(backends, run.run_id, "s2", 0)
    await scheduler.replay_run(run.run_id)
    assert await run.result(timeout=10) == arith.expected_total(1)
    assert check_log(await store.read(run.run_id), run.run_id) == []


async def test_a_run_whose_first_decision_was_lost_is_activated_by_the_reconciler(
    backends: Any, running: lf.Client
) -> None:
    """The log ends at run_started: the decision after it is gone, its activation acked."""
    store = backends.store
    run_id = "lost-decision-1"
    data = {"workflow": arith.total.name, "args": [2], "kwargs": {}}
    await store.append(
        run_id,
        [
            NewEvent.of(E.RUN_CREATED, data=data, workflow=arith.total.name),
            NewEvent.of(E.RUN_STARTED),
        ],
    )  # no activation: as if the scheduler had acted, then the failover lost its append
    lease = Lease(store.client, backends.names, owner="test-reconciler", ttl_ms=2000)
    reconciler = Reconciler(store, backends.broker, lease, stale_after=0.3, interval=0.2)
    task = asyncio.create_task(reconciler.run())
    try:
        assert await running.result(run_id, timeout=15) == arith.expected_total(2)
    finally:
        reconciler.stop()
        await asyncio.wait_for(task, 10)
    assert reconciler.recoveries["started, nothing decided"] == 1, reconciler.recoveries
    assert check_log(await store.read(run_id), run_id) == []


async def test_a_decision_whose_basis_the_log_lost_meanwhile_is_not_recorded(
    backends: Any, redis_client: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The failover strikes between a replay's read and its append.

    The scheduler has read s1's completion and decided to create s2; before its
    append lands, the log loses that completion. Recording s2 would put a step on
    the log whose predecessor, as far as the log knows, never finished: the append
    must be refused and the run decided again from the log as it now stands.
    """
    store = backends.store
    scheduler, run, keys, snapshot = await s1_created(backends, redis_client)
    await complete(backends, run.run_id, "s1", 0)

    append = store.append
    refused: list[str] = []

    async def failover_before(run_id: str, events: Any, *, based_on: str | None = None) -> Any:
        if based_on is not None and not refused:
            refused.append(based_on)
            for key, dumped in zip(keys, snapshot, strict=True):
                await redis_client.restore(key, 0, dumped, replace=True)
        return await append(run_id, events, based_on=based_on)

    monkeypatch.setattr(store, "append", failover_before)
    await scheduler.replay_run(run.run_id)  # reads s1's completion, decides s2: refused
    assert refused, "the decision was not appended conditionally"
    log = await store.read(run.run_id)
    assert [e.corr for e in log if e.type is E.STEP_CREATED] == ["s1"]
    assert not any(e.type is E.STEP_COMPLETED for e in log)
    assert check_log(log, run.run_id) == []

    monkeypatch.setattr(store, "append", append)
    await complete(backends, run.run_id, "s1", 0)  # the step's redelivered attempt
    await scheduler.replay_run(run.run_id)
    await complete(backends, run.run_id, "s2", 0)
    await scheduler.replay_run(run.run_id)
    assert await run.result(timeout=10) == arith.expected_total(1)
    assert check_log(await store.read(run.run_id), run.run_id) == []


async def test_a_step_outcome_lost_while_its_worker_lives_on_is_run_again(
    backends: Any, redis_client: aioredis.Redis, running: lf.Client
) -> None:
    """The failover lost s1's completion (and what followed); its worker is alive and idle.

    Nothing redelivers the step (its message was acked) and its worker lives, so only
    the worker's presence mark, which lists the runs it holds attempts of, tells the
    reconciler that the step is not running anywhere.
    """
    store, names = backends.store, backends.names
    run = await running.start(arith.slow_once_wf, 1.0)  # attempt 1 takes 1 s
    for _ in range(100):
        if any(e.type is E.STEP_STARTED for e in await store.read(run.run_id)):
            break
        await asyncio.sleep(0.05)
    rid = run.run_id
    keys = [
        names.stream(rid),
        names.status(rid),
        names.active_for(rid),
        names.finished_for(rid),
        names.runs_for(rid),
    ]
    # What the replica had when the master died: s1 started, nothing after.
    snapshot = [await redis_client.dump(key) for key in keys]
    assert await run.result(timeout=10) == "attempt 1"
    for key, dumped in zip(keys, snapshot, strict=True):
        if dumped is None:
            await redis_client.delete(key)
        else:
            await redis_client.restore(key, 0, dumped, replace=True)
    assert (await store.run_tail(rid))[0] == "started"

    # Marks are renewed every RENEW_EVERY_S: one that old is the oldest live one here.
    lease = Lease(store.client, names, owner="test-reconciler", ttl_ms=2000)
    reconciler = Reconciler(
        store,
        backends.broker,
        lease,
        stale_after=0.3,
        interval=0.2,
        presence_ttl_ms=int(presence.RENEW_EVERY_S * 1000) + 500,
    )
    task = asyncio.create_task(reconciler.run())
    try:
        tail: list[Any] = []
        for _ in range(300):
            tail = await store.read(rid)
            if any(e.type is E.RUN_COMPLETED for e in tail):
                break
            await asyncio.sleep(0.05)
    finally:
        reconciler.stop()
        await asyncio.wait_for(task, 10)
    assert reconciler.recoveries["step's outcome lost"] >= 1, reconciler.recoveries
    completed = [e for e in tail if e.type is E.STEP_COMPLETED]
    assert [e.attempt for e in completed] == [2]
    assert check_log(tail, rid) == []
