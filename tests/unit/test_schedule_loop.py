"""The schedule loop on the memory store, on a clock the test moves: exactly one run per
tick, the missed-tick and overlap policies, a claimer that dies, pauses."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from ledgerflow.broker import MemoryBroker
from ledgerflow.eventlog.events import EventType, NewEvent
from ledgerflow.eventlog.memory_store import MemoryEventStore
from ledgerflow.eventlog.names import Names
from ledgerflow.eventlog.records import RunCompleted, RunCreated, ScheduleRef
from ledgerflow.eventlog.schedules import (
    Advance,
    Missed,
    Schedule,
    TickOutcome,
    parse_run_id,
    run_id_for,
)
from ledgerflow.scheduler.recurrence import GRACE_MS
from ledgerflow.scheduler.schedule_loop import ScheduleLoop
from ledgerflow.scheduler.schedules import build_spec

from ledgerflow.ops.observer import Observer, Observers

from .helpers import unique_namespace

T0 = 1_800_000_000_000  # a tick of every interval below (a multiple of 2 s and of 120 s)


class Clock:
    def __init__(self, now: int) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


class Ticks(Observer):
    def __init__(self) -> None:
        self.seen: list[tuple[str, str, int, int]] = []

    def after_schedule_ticks(self, schedule: str, outcome: str, count: int, late_ms: int) -> None:
        self.seen.append((schedule, outcome, count, late_ms))


@dataclass
class Setup:
    store: MemoryEventStore
    broker: MemoryBroker
    clock: Clock
    ticks: Ticks

    def loop(self, lease_ms: int = 30_000) -> ScheduleLoop:
        return ScheduleLoop(
            self.store, self.broker, observers=Observers([self.ticks]), lease_ms=lease_ms
        )

    async def add(self, name: str = "often", next_ms: int = T0, **options: object) -> None:
        options.setdefault("every", 2)
        spec = build_spec(name, "reports.often", args=[name], **options)  # type: ignore[arg-type]
        await self.store.put_schedule(spec, next_ms=next_ms)

    async def schedule(self, name: str = "often") -> Schedule:
        [found] = await self.store.read_schedules([name])
        assert isinstance(found, Schedule)
        return found

    async def run_ticks(self, name: str = "often") -> list[int]:
        """The ticks that have a run, from the runs' ids (each id once, by construction)."""
        runs = await self.store.list_runs(limit=1000)
        ticks = []
        for run in runs:
            parsed = parse_run_id(run.run_id)  # None: another run (a continuation)
            if parsed is not None and parsed[0] == name:
                ticks.append(parsed[1])
        return sorted(ticks)

    async def drain(self, loop: ScheduleLoop) -> None:
        """Claim until nothing is due at the clock's time (a catch-up fires a tick a claim)."""
        for _ in range(100):
            due = self.store.memory_schedules._due.values()
            if not any(score <= self.clock.now for score in due):
                return
            await loop.run_once()
        raise AssertionError("still due after 100 claims")


@pytest.fixture
async def setup() -> AsyncIterator[Setup]:
    names = Names(unique_namespace())
    store = MemoryEventStore(names)
    clock = Clock(T0)
    store.memory_schedules.clock = clock
    broker = MemoryBroker(names)
    await broker.connect()
    try:
        yield Setup(store, broker, clock, Ticks())
    finally:
        await broker.close()


async def test_a_due_tick_starts_one_run_named_for_it_recording_the_schedule(
    setup: Setup,
) -> None:
    await setup.add()
    setup.clock.now = T0 + 150
    loop = setup.loop()
    idle = await loop.run_once()
    assert await setup.run_ticks() == [T0]
    run_id = run_id_for("often", T0)
    [created] = await setup.store.read(run_id)
    assert created.record == RunCreated(
        workflow="reports.often", args=["often"], schedule=ScheduleRef("often", T0)
    )
    assert await setup.broker.queue_depth(setup.store.names.runs_queue) == 1  # activated
    found = await setup.schedule()
    assert (found.next_ms, found.last_tick_ms, found.last_run, found.runs) == (
        T0 + 2_000,
        T0,
        run_id,
        1,
    )
    assert found.last_outcome is TickOutcome.STARTED
    assert setup.ticks.seen == [("often", "started", 1, 150)]
    assert 0 < idle <= 1.0  # sleeps until about the next tick
    # Nothing more until the next tick.
    await loop.run_once()
    assert await setup.run_ticks() == [T0]


async def test_two_loops_fire_each_tick_once(setup: Setup) -> None:
    await setup.add(overlap="allow")
    first, second = setup.loop(), setup.loop()
    for step in range(1, 21):
        setup.clock.now = T0 + step * 1_000 + 7
        await asyncio.gather(first.run_once(), second.run_once(), first.run_once())
    assert await setup.run_ticks() == [T0 + i * 2_000 for i in range(11)]
    assert (await setup.schedule()).runs == 11


async def test_a_claimer_killed_after_starting_the_run_leaves_it_to_the_next(
    setup: Setup,
) -> None:
    """Between the start and the advance: the lease runs out, the next claimer finds the
    tick's run already there, starts nothing new, and advances."""
    await setup.add(overlap="allow")
    setup.clock.now = T0 + 100
    dying = setup.loop(lease_ms=5_000)
    claimed = await setup.store.claim_schedules(10, 5_000)
    assert claimed.names == ["often"]
    schedule = await setup.schedule()
    await dying._start(schedule, run_id_for("often", T0), T0)  # ... and then it was killed
    assert await setup.run_ticks() == [T0]

    other = setup.loop()
    setup.clock.now = T0 + 1_000
    await other.run_once()  # still leased: nothing
    assert (await setup.schedule()).next_ms == T0
    setup.clock.now = T0 + 5_200  # the lease is over: T0 is due again, and so are 2 more
    await setup.drain(other)
    found = await setup.schedule()
    # T0 counts as started (its run was there); of the two after it, skip fires the newest.
    assert (found.last_tick_ms, found.runs, found.missed) == (T0 + 4_000, 2, 1)
    assert await setup.run_ticks() == [T0, T0 + 4_000]


async def test_a_late_claimer_started_the_same_run_and_the_advance_sorts_them_out(
    setup: Setup,
) -> None:
    await setup.add(missed=Missed(5))
    setup.clock.now = T0 + 100
    slow = setup.loop(lease_ms=1_000)
    await setup.store.claim_schedules(10, 1_000)
    stale = await setup.schedule()
    setup.clock.now = T0 + 1_500  # its lease ran out while it stalled
    fast = setup.loop()
    await fast.run_once()
    assert await setup.run_ticks() == [T0]
    # The slow one wakes up and acts on what it read: the same run id, a refused advance.
    assert await slow.act(stale, T0 + 100) is None
    assert await setup.run_ticks() == [T0]
    assert (await setup.schedule()).runs == 1


async def test_after_downtime_skip_fires_only_the_newest_tick(setup: Setup) -> None:
    await setup.add()
    setup.clock.now = T0 + 10_500  # T0 .. T0+10 s due: six ticks
    await setup.loop().run_once()
    assert await setup.run_ticks() == [T0 + 10_000]
    found = await setup.schedule()
    assert (found.missed, found.missed_tick_ms, found.next_ms) == (5, T0 + 8_000, T0 + 12_000)
    assert ("often", "missed", 5, 2_500) in setup.ticks.seen


async def test_after_downtime_a_tick_past_the_grace_is_let_go_under_skip(setup: Setup) -> None:
    await setup.add(every=120)
    setup.clock.now = T0 + GRACE_MS + 1
    await setup.loop().run_once()
    assert await setup.run_ticks() == []
    found = await setup.schedule()
    assert (found.missed, found.last_outcome, found.last_tick_ms) == (
        1,
        TickOutcome.MISSED,
        T0,
    )
    assert found.next_ms == T0 + 120_000
    assert setup.ticks.seen == [("often", "missed", 1, GRACE_MS + 1)]


async def test_catch_up_fires_the_newest_n_missed_ticks_oldest_first(setup: Setup) -> None:
    await setup.add(missed=Missed(3), overlap="allow")
    setup.clock.now = T0 + 10_500
    loop = setup.loop()
    await setup.drain(loop)
    assert await setup.run_ticks() == [T0 + 6_000, T0 + 8_000, T0 + 10_000]
    found = await setup.schedule()
    assert (found.runs, found.missed, found.next_ms) == (3, 3, T0 + 12_000)


async def test_a_committed_catch_up_is_finished_by_whoever_claims_next(setup: Setup) -> None:
    """The first claimer commits to T0+6..T0+10 and dies; time moves on; the next claimer
    fires what was committed, then applies the policy to what came due since."""
    await setup.add(missed=Missed(3), overlap="allow")
    setup.clock.now = T0 + 10_500
    await setup.store.claim_schedules(10, 1_000)
    commit = Advance(next_ms=T0 + 6_000, plan_ms=T0 + 10_000, missed=3, missed_tick_ms=T0 + 4_000)
    assert await setup.store.advance_schedule("often", T0, commit)  # ... and then it died
    setup.clock.now = T0 + 20_500  # five more ticks came due: T0+12 .. T0+20
    await setup.drain(setup.loop())
    assert await setup.run_ticks() == [T0 + s * 1_000 for s in (6, 8, 10, 16, 18, 20)]
    assert (await setup.schedule()).missed == 3 + 2


async def test_overlap_skip_records_a_tick_whose_previous_run_still_goes(setup: Setup) -> None:
    await setup.add()
    loop = setup.loop()
    setup.clock.now = T0 + 100
    await loop.run_once()
    setup.clock.now = T0 + 2_100  # the first run is still going (no scheduler runs here)
    await loop.run_once()
    assert await setup.run_ticks() == [T0]
    found = await setup.schedule()
    assert (found.last_outcome, found.last_tick_ms, found.overlapped) == (
        TickOutcome.OVERLAP,
        T0 + 2_000,
        1,
    )
    assert found.last_run == run_id_for("often", T0)  # what the next tick checks again
    # Once it ends, the next tick starts.
    await finish(setup.store, run_id_for("often", T0))
    setup.clock.now = T0 + 4_100
    await loop.run_once()
    assert await setup.run_ticks() == [T0, T0 + 4_000]


async def test_overlap_follows_a_run_that_continued_as_new(setup: Setup) -> None:
    await setup.add()
    loop = setup.loop()
    setup.clock.now = T0 + 100
    await loop.run_once()
    first = run_id_for("often", T0)
    successor = f"{first}:c1"
    await setup.store.append(
        successor, [NewEvent.of(EventType.RUN_CREATED, data={"workflow": "w"}, workflow="w")]
    )
    ended = RunCompleted(result=None, continued_as=successor).as_data()
    await setup.store.append(first, [NewEvent.of(EventType.RUN_STARTED)])
    await setup.store.append(first, [NewEvent.of(EventType.RUN_COMPLETED, data=ended)])
    setup.clock.now = T0 + 2_100
    await loop.run_once()
    assert (await setup.schedule()).last_outcome is TickOutcome.OVERLAP
    await finish(setup.store, successor)
    setup.clock.now = T0 + 4_100
    await loop.run_once()
    assert await setup.run_ticks() == [T0, T0 + 4_000]


async def test_overlap_allow_starts_every_tick(setup: Setup) -> None:
    await setup.add(overlap="allow")
    loop = setup.loop()
    for step in range(3):
        setup.clock.now = T0 + step * 2_000 + 100
        await loop.run_once()
    assert await setup.run_ticks() == [T0, T0 + 2_000, T0 + 4_000]


async def test_a_tick_whose_run_id_another_workflow_took_is_a_conflict(setup: Setup) -> None:
    await setup.add()
    taken = run_id_for("often", T0)
    await setup.store.append(
        taken, [NewEvent.of(EventType.RUN_CREATED, data={"workflow": "x"}, workflow="x")]
    )
    setup.clock.now = T0 + 100
    await setup.loop().run_once()
    found = await setup.schedule()
    assert (found.last_outcome, found.runs, found.last_run) == (TickOutcome.CONFLICT, 0, None)


async def test_a_paused_schedule_fires_nothing(setup: Setup) -> None:
    await setup.add()
    await setup.store.pause_schedule("often", paused=True, next_ms=0)
    setup.clock.now = T0 + 10_000
    await setup.loop().run_once()
    assert await setup.run_ticks() == []
    assert (await setup.schedule()).runs == 0


async def test_an_unreadable_schedule_is_left_out_and_the_others_fire(setup: Setup) -> None:
    await setup.add("good")
    await setup.add("broken")
    del setup.store.memory_schedules._hashes["broken"]["call"]
    setup.clock.now = T0 + 100
    loop = setup.loop()
    await loop.run_once()
    assert await setup.run_ticks("good") == [T0]
    assert "broken" not in setup.store.memory_schedules._due


async def finish(store: MemoryEventStore, run_id: str) -> None:
    state, _ = await store.run_tail(run_id)
    if state == "created":
        await store.append(run_id, [NewEvent.of(EventType.RUN_STARTED)])
    await store.append(run_id, [NewEvent.of(EventType.RUN_COMPLETED, data={"result": None})])
