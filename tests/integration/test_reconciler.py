"""The reconciler: lease, fencing, and recovery of every window between two writes (issue 5)."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest
from ledgerflow.eventlog.events import EventType, NewEvent
from ledgerflow.scheduler.reconciler import Reconciler
from ledgerflow.scheduler.service import Scheduler

import ledgerflow as lf
from ledgerflow.ops import faults
from ledgerflow.ops.lease import Lease
from tests.apps import arith

pytestmark = pytest.mark.integration


def lease_for(backends: Any, owner: str, ttl_ms: int = 2000) -> Lease:
    return Lease(backends.store.client, backends.names, owner=owner, ttl_ms=ttl_ms)


@pytest.fixture
async def reconciler(backends: Any) -> AsyncIterator[Reconciler]:
    """A fast reconciler in this process: stale after 0.5 s, sweeping every 0.2 s."""
    rec = Reconciler(
        backends.store,
        backends.broker,
        lease_for(backends, "test-reconciler"),
        stale_after=0.5,
        interval=0.2,
        default_step_limit=0.5,
    )
    task = asyncio.create_task(rec.run())
    try:
        yield rec
    finally:
        rec.stop()
        await asyncio.wait_for(task, 10)


@pytest.fixture(autouse=True)
def no_faults_left() -> Any:
    faults.disarm_all()
    yield
    faults.disarm_all()


def assert_clean(events: list[Any]) -> None:
    completed = Counter(e.corr for e in events if e.type is EventType.STEP_COMPLETED)
    assert not completed or max(completed.values()) == 1
    assert sum(e.type is EventType.RUN_COMPLETED for e in events) == 1


@pytest.mark.parametrize(
    ("point", "shape", "reason"),
    [
        # A chain: the lost activation is the only thing that would move the run on.
        (faults.WORKER_AFTER_STEP_COMPLETED, "chain", "outcome not acted on"),
        (faults.SCHEDULER_AFTER_STEP_CREATED, "chain", "step never started"),
        # A fan-out of 4: half of the batch's step messages are lost.
        (faults.SCHEDULER_MID_BATCH, "fan-out", "step never started"),
        # The activation is left unacked (the process "died"); the steps it published
        # carry the run on, and nothing may be recorded twice.
        (faults.SCHEDULER_AFTER_PUBLISH_BEFORE_ACK, "chain", None),
    ],
)
async def test_each_fault_window_is_repaired_within_stale_after_plus_a_sweep(
    running: lf.Client, reconciler: Reconciler, point: str, shape: str, reason: str | None
) -> None:
    faults.arm(point)
    if shape == "chain":
        run = await running.start(arith.long_chain, 3)
        expected = sum(range(3))
    else:
        run = await running.start(arith.total, 4)
        expected = arith.expected_total(4)
    assert await run.result(timeout=15) == expected
    assert faults.fired[point] == 1
    if reason is not None:
        assert reconciler.recoveries[reason] >= 1, reconciler.recoveries
    assert_clean(await running.events(run.run_id))


async def test_nothing_to_repair_means_no_recoveries(
    running: lf.Client, reconciler: Reconciler
) -> None:
    runs = [await running.start(arith.total, 3) for _ in range(5)]
    for run in runs:
        await run.result(timeout=15)
    await asyncio.sleep(1.0)
    assert reconciler.recoveries == Counter()
    assert reconciler.sweeps > 0


async def test_a_long_step_of_a_live_worker_is_left_alone(
    running: lf.Client, reconciler: Reconciler
) -> None:
    """No time limit and a live worker: a long step, never run twice at once.

    (Its message may have been released early, so nothing else covers it; the
    reconciler's fixture would call anything past 2 x 0.5 s "started long ago".)
    """
    run = await running.start(arith.slow_once_wf, 2.5)
    assert await run.result(timeout=15) == "attempt 1"
    assert reconciler.recoveries["step started long ago, no outcome"] == 0
    events = await running.events(run.run_id)
    assert [e.data["attempt"] for e in events if e.type is EventType.STEP_STARTED] == [1]


async def test_a_step_past_twice_its_own_limit_gets_a_new_attempt(backends: Any) -> None:
    """A live worker whose step overran twice its timeout with no outcome: try again."""
    store, broker, names = backends.store, backends.broker, backends.names
    await store.mark_alive("host:1", 60_000)
    run_id = "overran"
    created = NewEvent.of(EventType.RUN_CREATED, data={"workflow": "w"}, workflow="w")
    await store.append(run_id, [created])
    await store.append(run_id, [NewEvent.of(EventType.RUN_STARTED)])
    step = {"name": "it_slow_once", "queue": "default", "args": b"\x92\x91\x01\x80"}
    await store.append(run_id, [NewEvent.of(EventType.STEP_CREATED, "s1", step)])
    started = {"worker": "host:1", "timeout": 0.2}
    await store.append(run_id, [NewEvent.of(EventType.STEP_STARTED, "s1", started, attempt=1)])
    await asyncio.sleep(0.5)
    reconciler = Reconciler(store, broker, None, stale_after=0.1)
    report = await reconciler.sweep()
    assert report.recoveries["step started long ago, no outcome"] == 1
    assert await broker.queue_depth(names.step_queue()) == 1


async def test_two_schedulers_activating_the_same_runs_record_nothing_twice(
    backends: Any, running: lf.Client
) -> None:
    other = Scheduler(backends.store, backends.broker)
    runs = [await running.start(arith.fan_chain, 5, 3) for _ in range(10)]
    for _ in range(20):  # hammer every run from both schedulers at once
        await asyncio.gather(
            *(s.replay_run(r.run_id) for r in runs for s in (other, other)),
            return_exceptions=False,
        )
        await asyncio.sleep(0.01)
    for run in runs:
        assert await run.result(timeout=30) == arith.expected_fan_chain(5, 3)
        events = await running.events(run.run_id)
        created = Counter(e.corr for e in events if e.type is EventType.STEP_CREATED)
        assert max(created.values()) == 1
        assert_clean(events)


async def test_one_reconciler_acts_and_a_standby_takes_over(backends: Any) -> None:
    first = lease_for(backends, "reconciler-a", ttl_ms=800)
    second = lease_for(backends, "reconciler-b", ttl_ms=800)
    assert await first.acquire()
    assert not await second.acquire()
    assert first.holding is not None
    token_a = first.holding.token
    # a is killed (never releases); b takes over within the lease time
    await asyncio.sleep(0.9)
    assert await second.acquire()
    assert second.holding is not None
    assert second.holding.token > token_a
    assert not await first.check()  # a, resumed, must not act


async def test_a_stale_reconciler_never_acts(backends: Any, running: lf.Client) -> None:
    faults.arm(faults.SCHEDULER_AFTER_STEP_CREATED)
    run = await running.start(arith.total, 2)
    await asyncio.sleep(1.0)
    stale = Reconciler(
        backends.store,
        backends.broker,
        lease_for(backends, "paused", ttl_ms=300),
        stale_after=0.2,
    )
    assert await stale.lease.acquire()
    await asyncio.sleep(0.5)  # paused past its TTL ...
    usurper = lease_for(backends, "usurper", ttl_ms=5000)
    assert await usurper.acquire()  # ... while another took over
    with contextlib.suppress(Exception):
        await stale.sweep()
    assert stale.recoveries == Counter()
    assert (await running.state(run.run_id)).status == "started"  # still stuck: nobody acted
    await usurper.release()


async def started_by(store: Any, run_id: str, worker: str) -> None:
    """A run whose step s1 (no time limit) was started by ``worker`` and has no outcome."""
    created = NewEvent.of(EventType.RUN_CREATED, data={"workflow": "w"}, workflow="w")
    await store.append(run_id, [created])
    await store.append(run_id, [NewEvent.of(EventType.RUN_STARTED)])
    step = {"name": "it_slow_once", "queue": "default", "args": b"\x92\x91\x01\x80"}
    await store.append(run_id, [NewEvent.of(EventType.STEP_CREATED, "s1", step)])
    started = NewEvent.of(EventType.STEP_STARTED, "s1", {"worker": worker}, attempt=1)
    await store.append(run_id, [started])


@pytest.mark.parametrize(
    ("holding", "recovered"),
    [
        ({"another-run"}, 1),  # alive, holding nothing of this run: the outcome was lost
        (set(), 1),
        ({"outcome-lost"}, 0),  # still running it: a long step, left alone
        (None, 0),  # a plain mark (an older worker): cannot tell, left alone
    ],
)
async def test_a_started_step_its_live_worker_no_longer_holds_gets_a_new_attempt(
    backends: Any, holding: set[str] | None, recovered: int
) -> None:
    """After a failover lost a step's outcome, its worker lives on, running other things."""
    store, broker, names = backends.store, backends.broker, backends.names
    await store.mark_alive("host:2", 60_000, holding)
    await started_by(store, "outcome-lost", "host:2")
    await asyncio.sleep(0.5)
    reconciler = Reconciler(store, broker, None, stale_after=0.1, presence_ttl_ms=300)
    report = await reconciler.sweep()
    assert report.recoveries["step's outcome lost"] == recovered
    assert await broker.queue_depth(names.step_queue()) == recovered


async def test_a_step_started_within_the_marks_lifetime_is_not_judged_by_it(
    backends: Any,
) -> None:
    """A mark written before the step started cannot list it: it proves nothing yet."""
    store, broker, names = backends.store, backends.broker, backends.names
    await store.mark_alive("host:3", 60_000, set())
    await started_by(store, "just-started", "host:3")
    await asyncio.sleep(0.5)
    reconciler = Reconciler(store, broker, None, stale_after=0.1, presence_ttl_ms=60_000)
    report = await reconciler.sweep()
    assert report.recoveries["step's outcome lost"] == 0
    assert await broker.queue_depth(names.step_queue()) == 0
