"""Schedules in both event stores: one suite, the Redis store and the memory store.

The ``store`` fixture is the store conformance suite's (memory, and Redis on the
real server); ``tests/cluster/test_redis_cluster_schedules.py`` runs these cases
again on a Redis Cluster, where every schedule script must touch one slot.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis.asyncio as aioredis
from ledgerflow.eventlog import memory_schedules, redis_schedules
from ledgerflow.eventlog import schedules as sc
from ledgerflow.eventlog.errors import (
    InvalidArgumentError,
    ScheduleExistsError,
    ScheduleNotFoundError,
)
from ledgerflow.eventlog.memory_store import MemoryEventStore
from ledgerflow.eventlog.names import Names
from ledgerflow.eventlog.schedules import (
    Advance,
    Missed,
    Overlap,
    PutOutcome,
    Schedule,
    ScheduleSpec,
    Source,
    TickOutcome,
    Unreadable,
    encode_call,
)
from ledgerflow.eventlog.store import EventStore

from tests.eventlog import test_store_conformance as conformance

# The store conformance suite's fixtures: both stores, each test in its own namespace.
store_client = conformance.store_client
store = conformance.store

LONG_LEASE = 60_000


def spec(name: str = "nightly", **changes: Any) -> ScheduleSpec:
    fields: dict[str, Any] = {
        "name": name,
        "workflow": "reports.nightly",
        "call": encode_call(name, [1, "two"], {"k": 3}),
        "every_s": 2,
    }
    fields.update(changes)
    return ScheduleSpec(**fields)


async def stored(store: EventStore, name: str = "nightly") -> Schedule:
    [found] = await store.read_schedules([name])
    assert isinstance(found, Schedule), found
    return found


async def test_a_schedule_is_stored_and_read_back_as_it_was_defined(store: EventStore) -> None:
    now = await store.now_ms()
    defined = spec(
        cron="0 3 * * *",
        timezone="Europe/Berlin",
        every_s=0,
        missed=Missed(3),
        overlap=Overlap.ALLOW,
        source=Source.CODE,
    )
    result = await store.put_schedule(defined, next_ms=now + 5_000)
    assert (result.outcome, result.previous_source) == (PutOutcome.CREATED, None)
    found = await stored(store)
    assert found.spec == defined
    assert found.spec.arguments() == ([1, "two"], {"k": 3})
    assert (found.paused, found.next_ms, found.plan_ms) == (False, now + 5_000, 0)
    assert (found.runs, found.missed, found.overlapped) == (0, 0, 0)
    assert (found.last_tick_ms, found.last_run, found.last_outcome) == (None, None, None)
    assert abs(found.created_ms - now) < 60_000
    assert found.updated_ms == found.created_ms
    assert await store.read_schedules(["other"]) == []
    assert [s.name for s in await store.read_schedules()] == ["nightly"]


async def test_a_name_is_taken_once_unless_replaced(store: EventStore) -> None:
    now = await store.now_ms()
    await store.put_schedule(spec(), next_ms=now + 10_000)
    with pytest.raises(ScheduleExistsError, match="'nightly' exists already"):
        await store.put_schedule(spec(workflow="other"), next_ms=now)
    assert (await stored(store)).spec.workflow == "reports.nightly"

    same = await store.put_schedule(spec(), next_ms=now + 99_000, replace=True)
    assert (same.outcome, same.previous_source) == (PutOutcome.UNCHANGED, Source.CLI)

    # A change that is not the recurrence keeps the next tick.
    changed = await store.put_schedule(
        spec(workflow="other", source=Source.CODE), next_ms=now + 99_000, replace=True
    )
    assert (changed.outcome, changed.previous_source) == (PutOutcome.UPDATED, Source.CLI)
    found = await stored(store)
    assert (found.spec.workflow, found.spec.source, found.next_ms) == (
        "other",
        Source.CODE,
        now + 10_000,
    )
    # A new recurrence moves it to the next tick given.
    await store.put_schedule(spec(every_s=5), next_ms=now + 3_000, replace=True)
    assert (await stored(store)).next_ms == now + 3_000


async def test_only_due_schedules_are_claimed_and_a_claim_is_leased(store: EventStore) -> None:
    now = await store.now_ms()
    await store.put_schedule(spec("due"), next_ms=now - 1_000)
    await store.put_schedule(spec("later"), next_ms=now + 30_000)
    claimed = await store.claim_schedules(10, LONG_LEASE)
    assert claimed.names == ["due"]
    assert abs(claimed.now_ms - now) < 10_000
    assert claimed.earliest_ms == now + 30_000  # the claimed one is leased for longer
    # Leased: no other claimer sees it meanwhile.
    assert (await store.claim_schedules(10, LONG_LEASE)).names == []


async def test_a_claim_whose_claimer_died_comes_due_again(store: EventStore) -> None:
    now = await store.now_ms()
    await store.put_schedule(spec(), next_ms=now - 1_000)
    assert (await store.claim_schedules(10, 50)).names == ["nightly"]
    await asyncio.sleep(0.2)
    assert (await store.claim_schedules(10, LONG_LEASE)).names == ["nightly"]


async def test_an_advance_lands_only_on_the_tick_it_claimed(store: EventStore) -> None:
    now = await store.now_ms()
    tick = now - 5_000
    await store.put_schedule(spec(), next_ms=tick)
    await store.claim_schedules(10, LONG_LEASE)
    fired = Advance(
        next_ms=tick + 2_000,
        tick_ms=tick,
        outcome=TickOutcome.STARTED,
        run_id="sched:nightly:20260101T000000Z",
    )
    assert not await store.advance_schedule("nightly", tick - 2_000, fired)
    assert await store.advance_schedule("nightly", tick, fired)
    assert not await store.advance_schedule("nightly", tick, fired)  # a second claimer's
    found = await stored(store)
    assert (found.next_ms, found.last_tick_ms, found.last_outcome, found.last_run) == (
        tick + 2_000,
        tick,
        TickOutcome.STARTED,
        "sched:nightly:20260101T000000Z",
    )
    assert (found.runs, found.missed, found.overlapped) == (1, 0, 0)
    assert found.acted_ms is not None and abs(found.acted_ms - now) < 60_000
    # Due again at its next tick (already past here), no longer leased.
    assert (await store.claim_schedules(10, LONG_LEASE)).names == ["nightly"]


async def test_advances_count_overlaps_and_missed_ticks_and_keep_the_last_run(
    store: EventStore,
) -> None:
    now = await store.now_ms()
    await store.put_schedule(spec(), next_ms=now - 10_000)
    started = Advance(
        next_ms=now - 8_000,
        tick_ms=now - 10_000,
        outcome=TickOutcome.STARTED,
        run_id="sched:nightly:20260101T000000Z",
    )
    assert await store.advance_schedule("nightly", now - 10_000, started)
    commit = Advance(next_ms=now - 2_000, plan_ms=now - 2_000, missed=3, missed_tick_ms=now - 4_000)
    assert await store.advance_schedule("nightly", now - 8_000, commit)
    overlapped = Advance(
        next_ms=now, plan_ms=now - 2_000, tick_ms=now - 2_000, outcome=TickOutcome.OVERLAP
    )
    assert await store.advance_schedule("nightly", now - 2_000, overlapped)
    found = await stored(store)
    assert (found.runs, found.missed, found.overlapped) == (1, 3, 1)
    assert found.last_outcome is TickOutcome.OVERLAP
    assert found.last_run == "sched:nightly:20260101T000000Z"  # the run the next check looks at
    assert (found.missed_tick_ms, found.plan_ms, found.next_ms) == (now - 4_000, now - 2_000, now)


async def test_a_paused_schedule_is_never_claimed_and_resumes_at_the_tick_given(
    store: EventStore,
) -> None:
    now = await store.now_ms()
    await store.put_schedule(spec(), next_ms=now - 1_000)
    assert await store.pause_schedule("nightly", paused=True, next_ms=0)
    assert not await store.pause_schedule("nightly", paused=True, next_ms=0)
    assert (await stored(store)).paused
    assert (await store.claim_schedules(10, LONG_LEASE)).names == []
    assert await store.schedule_lag() == 0
    # A replace (a deploy) keeps it paused.
    await store.put_schedule(spec(every_s=7), next_ms=now - 500, replace=True)
    assert (await stored(store)).paused
    assert (await store.claim_schedules(10, LONG_LEASE)).names == []

    assert await store.pause_schedule("nightly", paused=False, next_ms=now - 100)
    assert not await store.pause_schedule("nightly", paused=False, next_ms=now)
    found = await stored(store)
    assert (found.paused, found.next_ms) == (False, now - 100)
    assert (await store.claim_schedules(10, LONG_LEASE)).names == ["nightly"]
    with pytest.raises(ScheduleNotFoundError):
        await store.pause_schedule("missing", paused=True, next_ms=0)


async def test_an_advance_of_a_schedule_paused_meanwhile_leaves_it_out(store: EventStore) -> None:
    now = await store.now_ms()
    await store.put_schedule(spec(), next_ms=now - 1_000)
    await store.claim_schedules(10, 50)
    await store.pause_schedule("nightly", paused=True, next_ms=0)
    fired = Advance(next_ms=now - 10, tick_ms=now - 1_000, outcome=TickOutcome.STARTED)
    assert await store.advance_schedule("nightly", now - 1_000, fired)
    await asyncio.sleep(0.1)
    assert (await store.claim_schedules(10, LONG_LEASE)).names == []


async def test_deleting_a_schedule_removes_it_from_everything(store: EventStore) -> None:
    now = await store.now_ms()
    await store.put_schedule(spec(), next_ms=now - 1_000)
    assert await store.delete_schedule("nightly")
    assert not await store.delete_schedule("nightly")
    assert await store.read_schedules() == []
    assert (await store.claim_schedules(10, LONG_LEASE)).names == []
    fired = Advance(next_ms=now, tick_ms=now - 1_000, outcome=TickOutcome.STARTED)
    assert not await store.advance_schedule("nightly", now - 1_000, fired)
    with pytest.raises(ScheduleNotFoundError):
        await store.pause_schedule("nightly", paused=False, next_ms=now)


async def test_the_lag_is_how_long_the_most_overdue_schedule_waits(store: EventStore) -> None:
    assert await store.schedule_lag() == 0
    now = await store.now_ms()
    await store.put_schedule(spec("a"), next_ms=now + 60_000)
    assert await store.schedule_lag() == 0
    await store.put_schedule(spec("b"), next_ms=now - 30_000)
    assert 30_000 <= await store.schedule_lag() < 90_000


async def test_a_namespace_holds_a_bounded_number_of_schedules(
    store: EventStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(redis_schedules, "MAX_SCHEDULES", 2)
    monkeypatch.setattr(memory_schedules, "MAX_SCHEDULES", 2)
    now = await store.now_ms()
    await store.put_schedule(spec("a"), next_ms=now)
    await store.put_schedule(spec("b"), next_ms=now)
    with pytest.raises(InvalidArgumentError, match="holds 2 schedules already"):
        await store.put_schedule(spec("c"), next_ms=now)
    await store.put_schedule(spec("b", every_s=9), next_ms=now, replace=True)  # not a new one
    assert [s.name for s in await store.read_schedules()] == ["a", "b"]


@pytest.mark.parametrize("bad", ["", "a:b", "a b", "-a", "x" * 65, "é", "a\nb", "a{b}"])
async def test_a_name_outside_the_rule_is_refused(store: EventStore, bad: str) -> None:
    with pytest.raises(InvalidArgumentError, match="invalid schedule name"):
        await store.delete_schedule(bad)
    with pytest.raises(InvalidArgumentError, match="invalid schedule name"):
        await store.pause_schedule(bad, paused=True, next_ms=0)


async def write_raw(
    store: EventStore, client: aioredis.Redis | None, name: str, fields: dict[str, Any]
) -> None:
    """A hash written around ledgerflow (by hand, or by something else entirely)."""
    if client is None:
        assert isinstance(store, MemoryEventStore)
        store.memory_schedules._hashes[name] = dict(fields)
        store.memory_schedules._due[name] = 0
        return
    names = Names(store.names.namespace, store.names.shards)
    await client.hset(names.schedule(name), mapping=fields)
    await client.sadd(names.schedule_names(), name)
    await client.zadd(names.schedule_due(), {name: 0})


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ({"workflow": "w"}, "missing"),
        ({**spec().fields(), sc.NEXT: "soon"}, "not a whole number"),
        ({**spec().fields(), sc.NEXT: "1", sc.MISSED: "catch_up:100000"}, "missed-tick policy"),
        ({**spec().fields(), sc.NEXT: "1", sc.OVERLAP: "sometimes"}, "overlap"),
        ({**spec().fields(), sc.NEXT: "1", sc.EVERY: "0"}, "either a cron"),
        ({**spec().fields(), sc.NEXT: "1", sc.TIMEZONE: "../../etc"}, "invalid time zone"),
        ({**spec().fields(), sc.NEXT: "1", sc.RUN: "a|b"}, "invalid run id"),
    ],
)
async def test_a_stored_schedule_is_checked_field_by_field(
    store: EventStore,
    store_client: aioredis.Redis | None,
    fields: dict[str, Any],
    error: str,
) -> None:
    await write_raw(store, store_client, "broken", fields)
    [found] = await store.read_schedules()
    assert isinstance(found, Unreadable)
    assert found.name == "broken"
    assert error in found.error
    # Its claim can be dropped, so it never comes due again.
    assert (await store.claim_schedules(10, LONG_LEASE)).names == ["broken"]
    await store.drop_schedule_claim("broken")
    await asyncio.sleep(0.01)
    assert await store.schedule_lag() == 0
