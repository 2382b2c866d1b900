"""Group commit and coalesced activations: fewer calls under load, the same guarantees."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest
from ledgerflow.eventlog.errors import IllegalTransitionError, RunClosedError
from ledgerflow.eventlog.events import AppendResult, EventType, NewEvent
from ledgerflow.eventlog.memory_store import MemoryEventStore
from ledgerflow.worker.batching import Coalesced, GroupCommit


class CountingStore(MemoryEventStore):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[int] = []

    async def append(self, run_id: str, events: Sequence[NewEvent]) -> list[AppendResult]:
        self.calls.append(len(events))
        await asyncio.sleep(0.01)  # a round trip, during which others queue up
        return await super().append(run_id, events)


async def new_run(store: MemoryEventStore, run_id: str, steps: int) -> None:
    await MemoryEventStore.append(
        store,
        run_id,
        [
            NewEvent.of(EventType.RUN_CREATED, data={"workflow": "w"}, workflow="w"),
            NewEvent.of(EventType.RUN_STARTED),
            *(NewEvent.of(EventType.STEP_CREATED, f"s{i}", {"name": "n"}) for i in range(steps)),
        ],
    )


def started(corr: str) -> NewEvent:
    return NewEvent.of(EventType.STEP_STARTED, corr, {}, attempt=1)


async def test_appends_arriving_together_share_calls_and_get_their_own_results() -> None:
    store = CountingStore()
    await new_run(store, "r", 20)
    commit = GroupCommit(store)
    results = await asyncio.gather(*(commit.append("r", [started(f"s{i}")]) for i in range(20)))
    assert store.calls == [20]  # asked in one tick: one call for all of them
    assert [len(r) for r in results] == [1] * 20
    assert all(r[0].appended for r in results)
    ids = [r[0].event_id for r in results]
    events = await store.read("r")
    by_corr = {e.corr: e.id for e in events if e.type is EventType.STEP_STARTED}
    assert ids == [by_corr[f"s{i}"] for i in range(20)]


async def test_one_illegal_batch_does_not_fail_its_neighbours() -> None:
    store = CountingStore()
    await new_run(store, "r", 3)
    commit = GroupCommit(store)
    completed_unstarted = NewEvent.of(EventType.STEP_COMPLETED, "s2", {"result": 1}, attempt=1)
    first = asyncio.ensure_future(commit.append("r", [started("s0")]))
    await asyncio.sleep(0)
    good = asyncio.ensure_future(commit.append("r", [started("s1")]))
    bad = asyncio.ensure_future(commit.append("r", [completed_unstarted]))
    (r0,), (r1,) = await first, await good
    assert r0.appended and r1.appended
    with pytest.raises(IllegalTransitionError):
        await bad
    types = [e.type for e in await store.read("r")]
    assert types.count(EventType.STEP_STARTED) == 2
    assert EventType.STEP_COMPLETED not in types


async def test_a_closed_run_is_the_answer_for_everyone() -> None:
    store = CountingStore()
    await new_run(store, "r", 2)
    await MemoryEventStore.append(store, "r", [NewEvent.of(EventType.RUN_CANCELLED)])
    commit = GroupCommit(store)
    outcomes = await asyncio.gather(
        *(commit.append("r", [started(f"s{i}")]) for i in range(2)), return_exceptions=True
    )
    assert all(isinstance(o, RunClosedError) for o in outcomes)


async def test_coalesced_callers_return_after_a_call_that_began_after_them() -> None:
    calls: list[int] = []
    asked: dict[int, int] = {}

    async def action(key: str) -> None:
        calls.append(len(calls))
        await asyncio.sleep(0.01)

    coalesced = Coalesced(action)

    async def caller(i: int) -> int:
        asked[i] = len(calls)  # calls begun before this caller asked
        await coalesced("run")
        return len(calls)

    first = asyncio.ensure_future(caller(0))
    await asyncio.sleep(0.002)  # the first call is now in flight
    rest = [asyncio.ensure_future(caller(i)) for i in range(1, 10)]
    done = await asyncio.gather(first, *rest)
    assert len(calls) == 2  # ten callers, two calls
    for i, finished_after in enumerate(done):
        assert finished_after > asked[i]


async def test_a_failed_call_reaches_its_callers_and_the_next_round_still_runs() -> None:
    attempts: list[str] = []

    async def action(key: str) -> None:
        attempts.append(key)
        await asyncio.sleep(0.005)
        if len(attempts) == 1:
            raise ConnectionError("broker away")

    coalesced = Coalesced(action)
    first = asyncio.ensure_future(coalesced("run"))
    await asyncio.sleep(0.001)
    second = asyncio.ensure_future(coalesced("run"))
    with pytest.raises(ConnectionError):
        await first
    await second
    assert attempts == ["run", "run"]


async def test_coalescing_is_per_key() -> None:
    seen: list[str] = []

    async def action(key: str) -> None:
        seen.append(key)
        await asyncio.sleep(0.005)

    coalesced = Coalesced(action)
    await asyncio.gather(*(coalesced(k) for k in ("a", "b", "c")))
    assert sorted(seen) == ["a", "b", "c"]
