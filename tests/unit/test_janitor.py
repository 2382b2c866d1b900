"""The janitor on the in-memory store: what is due, what is kept, the disposer hook."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from ledgerflow.eventlog.errors import ConfigurationError, InvalidArgumentError
from ledgerflow.eventlog.events import EventType, NewEvent
from ledgerflow.eventlog.memory_store import MemoryEventStore
from ledgerflow.eventlog.names import Names
from ledgerflow.eventlog.retention import parse_retention, retention_ms
from ledgerflow.eventlog.store import RemoveOutcome
from ledgerflow.scheduler.janitor import Janitor
from ledgerflow.scheduler.registry import workflow

from ledgerflow.ops.metrics import RUNS_REMOVED, MetricsObserver
from ledgerflow.ops.observer import Observer

HOUR = 3_600_000


class Clock(MemoryEventStore):
    """A memory store whose clock the janitor reads can be moved forward."""

    def __init__(self) -> None:
        super().__init__(Names("janitor"))
        self.ahead = 0

    async def now_ms(self) -> int:
        return await super().now_ms() + self.ahead


async def finished(store: MemoryEventStore, run_id: str, retention: int | None = None) -> None:
    data: dict[str, Any] = {"workflow": "wf", "args": [], "kwargs": {}}
    if retention is not None:
        data["retention_ms"] = retention
    created = NewEvent.of(EventType.RUN_CREATED, data=data, workflow="wf", retention_ms=retention)
    await store.append(run_id, [created, NewEvent.of(EventType.RUN_STARTED)])
    await store.append(run_id, [NewEvent.of(EventType.RUN_COMPLETED, data={"result": 1})])


async def live(store: MemoryEventStore, run_id: str) -> None:
    created = NewEvent.of(EventType.RUN_CREATED, data={"workflow": "wf"}, workflow="wf")
    await store.append(run_id, [created, NewEvent.of(EventType.RUN_STARTED)])


async def test_runs_with_their_own_retention_are_removed_once_due() -> None:
    store = Clock()
    await finished(store, "short", retention=HOUR)
    await finished(store, "long", retention=48 * HOUR)
    await finished(store, "default")  # no retention, no default: kept
    await live(store, "running")
    janitor = Janitor(store, observers=[])
    assert (await janitor.sweep()).removed == 0
    store.ahead = 2 * HOUR
    report = await janitor.sweep()
    assert report.removed == 1 and report.bytes_removed > 0
    assert not await store.exists("short")
    assert all([await store.exists(r) for r in ("long", "default", "running")])
    store.ahead = 100 * 24 * HOUR
    assert (await janitor.sweep()).removed == 1
    assert all([await store.exists(r) for r in ("default", "running")])


async def test_the_default_applies_to_runs_that_finished_before_it_was_set() -> None:
    store = Clock()
    for run in ("a", "b"):
        await finished(store, run)
    await live(store, "running")
    store.ahead = 3 * HOUR
    assert (await Janitor(store, observers=[]).sweep()).removed == 0  # no default: kept
    janitor = Janitor(store, default_retention_ms=2 * HOUR, observers=[])
    assert (await janitor.sweep()).removed == 2
    assert not await store.exists("a") and not await store.exists("b")
    assert await store.exists("running")  # live runs are never touched, however old


async def test_pages_and_the_per_shard_bound() -> None:
    store = Clock()
    for i in range(30):
        await finished(store, f"r{i}", retention=HOUR)
    store.ahead = 2 * HOUR
    janitor = Janitor(store, observers=[], page=3, runs_per_shard=1)
    first = await janitor.sweep()
    assert 0 < first.removed < 30
    while (await janitor.sweep()).removed:
        pass
    assert not any([await store.exists(f"r{i}") for i in range(30)])


class OneShard(Clock):
    """Every run in one shard, so the janitor's pages are the only split."""

    def __init__(self) -> None:
        super().__init__()
        self.names = Names("janitor", shards=1)


async def test_a_lost_lease_stops_removal_before_the_next_page() -> None:
    store = OneShard()
    for i in range(5):
        await finished(store, f"r{i}", retention=HOUR)
    store.ahead = 2 * HOUR
    checks = 0

    async def fence() -> None:
        nonlocal checks
        checks += 1
        if checks == 2:
            raise LookupError("the lease is someone else's")

    with pytest.raises(LookupError):
        await Janitor(store, observers=[], page=2).sweep(fence=fence)
    # One check for the first page (two runs removed); the second stopped the rest.
    assert [await store.exists(f"r{i}") for i in range(5)] == [False, False, True, True, True]


async def test_the_disposer_hook_and_a_refusing_disposer() -> None:
    store = Clock()
    await finished(store, "a", retention=HOUR)
    await finished(store, "b", retention=HOUR)
    store.ahead = 2 * HOUR
    asked: list[str] = []

    async def archive_then_remove(run_id: str) -> RemoveOutcome:
        asked.append(run_id)
        if run_id == "b":
            return RemoveOutcome.MOVED  # e.g. the archive saw a different log: left alone
        return await store.remove_run(run_id)

    janitor = Janitor(store, dispose=archive_then_remove, observers=[])
    report = await janitor.sweep()  # terminates although "b" stays due
    assert sorted(asked) == ["a", "b"]
    assert report.removed == 1 and report.left == {"moved": 1}
    assert not await store.exists("a") and await store.exists("b")


async def test_removals_are_counted_through_the_observers() -> None:
    store = Clock()
    await finished(store, "a", retention=HOUR)
    store.ahead = 2 * HOUR
    seen: list[tuple[str, int]] = []

    class Recorder(Observer):
        def after_run_removed(self, run_id: str, size_bytes: int) -> None:
            seen.append((run_id, size_bytes))

    before = RUNS_REMOVED._value.get()
    await Janitor(store, observers=[Recorder(), MetricsObserver()]).sweep()
    assert [run for run, _ in seen] == ["a"] and seen[0][1] > 0
    assert RUNS_REMOVED._value.get() == before + 1


def test_retention_values_are_bounded() -> None:
    assert retention_ms(dt.timedelta(days=7)) == 7 * 24 * HOUR
    assert parse_retention("7d") == 7 * 24 * HOUR
    assert parse_retention("12h") == 12 * HOUR
    assert parse_retention("30m") == 30 * 60_000
    assert parse_retention("90s") == 90_000
    for bad in ("0s", "500ms", "-1d", "7", "d", "1e400d", "200000w", "forever"):
        with pytest.raises(InvalidArgumentError):
            parse_retention(bad)
    for value in (dt.timedelta(0), dt.timedelta(seconds=-5), float("nan"), "7d", True):
        with pytest.raises(InvalidArgumentError):
            retention_ms(value)


def test_the_decorator_refuses_a_retention_out_of_bounds() -> None:
    with pytest.raises(ConfigurationError, match="between 1 second and 100 years"):

        @workflow(name="unit_bad_retention", retention=dt.timedelta(0))
        async def bad() -> None:
            return None
