"""One conformance suite for both event stores: the Redis store and the in-memory store.

Every behaviour the event model promises (DESIGN.md, "Events") is checked against
both through the ``store`` fixture; the parity tests at the end run one table of
cases, generated from ``eventlog.transitions.RULES``, through both stores side by
side and demand the same verdict from each.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
import redis.asyncio as aioredis
from ledgerflow.eventlog import codec, memory_outputs, redis_outputs, redis_store
from ledgerflow.eventlog.delays import MAX_DELAY_MS, MAX_DUE_MS
from ledgerflow.eventlog.derived import expected_state, repair_run, verify_run
from ledgerflow.eventlog.errors import (
    AppendArgumentError,
    BlobError,
    EventLogError,
    HookTokenConflictError,
    IllegalTransitionError,
    InvalidArgumentError,
    LogTruncatedError,
    PayloadTooLargeError,
    RunClosedError,
    RunNotFoundError,
    SerializationError,
    StepMismatchError,
    StreamClosedError,
    WorkflowMismatchError,
)
from ledgerflow.eventlog.events import AppendResult, Event, EventType, NewEvent
from ledgerflow.eventlog.fold import fold
from ledgerflow.eventlog.integrity import call_fingerprint
from ledgerflow.eventlog.memory_store import MemoryEventStore
from ledgerflow.eventlog.names import Names, shard_of
from ledgerflow.eventlog.outputs import EntryKind, OutputEntry, parse_entry
from ledgerflow.eventlog.redis_store import RedisEventStore
from ledgerflow.eventlog.store import START, EventStore, RemovalIndex, RemoveOutcome
from ledgerflow.eventlog.timers import Timer, TimerKind
from ledgerflow.eventlog.transitions import ABSENT, RULES, RUN_TERMINAL_STATES, Action, Guard

E = EventType
WF = "orders.checkout"


# --- helpers ----------------------------------------------------------------------------


def ev(
    type: EventType,
    corr: str = "",
    data: Any = None,
    *,
    attempt: int | None = None,
    workflow: str = "",
) -> NewEvent:
    return NewEvent.of(type, corr, data, attempt=attempt, workflow=workflow)


def run_created(workflow: str = WF) -> NewEvent:
    data = {"workflow": workflow, "args": [1, "two"], "kwargs": {"k": 3}}
    return ev(E.RUN_CREATED, data=data, workflow=workflow)


def step_created(corr: str, name: str = "charge") -> NewEvent:
    data = {"name": name, "queue": "default", "args": codec.encode([corr])}
    return ev(E.STEP_CREATED, corr, data)


def id_key(event_id: str) -> tuple[int, int]:
    ms, seq = event_id.split("-")
    return int(ms), int(seq)


def new_run_id() -> str:
    return f"run-{uuid.uuid4().hex[:10]}"


async def append_ok(store: EventStore, run_id: str, events: list[NewEvent]) -> list[str]:
    """Append a batch that must be written in full; return the new ids."""
    results = await store.append(run_id, events)
    assert [r.appended for r in results] == [True] * len(events), results
    ids = [r.event_id for r in results]
    assert all(isinstance(i, str) for i in ids)
    return [i for i in ids if i is not None]


async def append_one(store: EventStore, run_id: str, event: NewEvent) -> AppendResult:
    results = await store.append(run_id, [event])
    assert len(results) == 1
    return results[0]


async def started_run(store: EventStore, run_id: str) -> None:
    await append_ok(store, run_id, [run_created(), ev(E.RUN_STARTED)])


async def started_step(store: EventStore, run_id: str, corr: str = "s1") -> None:
    await started_run(store, run_id)
    await append_ok(store, run_id, [step_created(corr), ev(E.STEP_STARTED, corr, attempt=1)])


async def snapshot(store: EventStore, run_id: str) -> tuple[list[Event], dict[str, str]]:
    return await store.read(run_id), await store.status(run_id)


# --- fixtures ---------------------------------------------------------------------------


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.integration)])
def store_client(request: pytest.FixtureRequest) -> aioredis.Redis | None:
    """None for the memory store; only the redis flavour asks for servers (and cleanup)."""
    if request.param == "memory":
        return None
    client: aioredis.Redis = request.getfixturevalue("redis_client")
    return client


@pytest.fixture
async def store(store_client: aioredis.Redis | None, names: Names) -> AsyncIterator[EventStore]:
    """The store under test, closed after the test (before its Redis client is)."""
    if store_client is None:
        built: EventStore = MemoryEventStore(names)
    else:
        built = RedisEventStore(store_client, names)
    yield built
    await built.close()


@pytest.fixture
def run_id() -> str:
    return new_run_id()


# --- run lifecycle ----------------------------------------------------------------------


async def test_run_lifecycle_and_status_hash(store: EventStore, run_id: str) -> None:
    assert await store.status(run_id) == {}
    assert not await store.exists(run_id)

    [created_id] = await append_ok(store, run_id, [run_created()])
    status = await store.status(run_id)
    assert set(status) == {"run", "wf", "created", "last", "n"}
    assert status["run"] == "created"
    assert status["wf"] == WF
    assert status["last"] == created_id
    assert status["n"] == "1"
    assert abs(int(status["created"]) - time.time() * 1000) < 60_000
    assert await store.exists(run_id)

    [started_id] = await append_ok(store, run_id, [ev(E.RUN_STARTED)])
    status = await store.status(run_id)
    assert (status["run"], status["last"], status["n"]) == ("started", started_id, "2")

    ids = await append_ok(
        store,
        run_id,
        [
            step_created("s1"),
            ev(E.STEP_STARTED, "s1", attempt=1),
            ev(E.STEP_COMPLETED, "s1", {"result": 42}, attempt=1),
        ],
    )
    status = await store.status(run_id)
    assert status["c:s1"] == "step.completed"
    assert status["a:s1"] == "1"
    assert status["last"] == ids[-1]
    assert status["n"] == "5"

    [done_id] = await append_ok(store, run_id, [ev(E.RUN_COMPLETED, data={"result": "ok"})])
    status = await store.status(run_id)
    assert (status["run"], status["last"], status["n"]) == ("completed", done_id, "6")
    assert status["wf"] == WF

    events = await store.read(run_id)
    assert [e.type for e in events] == [
        E.RUN_CREATED,
        E.RUN_STARTED,
        E.STEP_CREATED,
        E.STEP_STARTED,
        E.STEP_COMPLETED,
        E.RUN_COMPLETED,
    ]
    assert [e.id for e in events] == [created_id, started_id, *ids, done_id]
    assert [e.corr for e in events] == ["", "", "s1", "s1", "s1", ""]
    assert events[0].data == {"workflow": WF, "args": [1, "two"], "kwargs": {"k": 3}}
    assert events[3].data == {"attempt": 1}
    assert events[3].attempt == 1
    assert events[4].data == {"result": 42, "attempt": 1}
    assert all(e.v == 1 for e in events)
    assert all(abs(e.ts - time.time() * 1000) < 60_000 for e in events)
    assert [id_key(e.id) for e in events] == sorted(id_key(e.id) for e in events)


async def test_run_cancelled_from_created_and_failed_from_started(store: EventStore) -> None:
    cancelled, failed = new_run_id(), new_run_id()
    await append_ok(store, cancelled, [run_created(), ev(E.RUN_CANCELLED, data={"reason": "x"})])
    assert (await store.status(cancelled))["run"] == "cancelled"
    await started_run(store, failed)
    await append_ok(store, failed, [ev(E.RUN_FAILED, data={"error": {"type": "E"}})])
    assert (await store.status(failed))["run"] == "failed"
    with pytest.raises(RunClosedError):
        await store.append(cancelled, [ev(E.RUN_COMPLETED)])
    with pytest.raises(RunClosedError):
        await store.append(failed, [ev(E.RUN_CANCELLED)])


async def test_empty_batch_writes_nothing(store: EventStore, run_id: str) -> None:
    assert await store.append(run_id, []) == []
    assert await store.read(run_id) == []
    assert await store.status(run_id) == {}


async def test_run_created_twice_is_a_duplicate(store: EventStore, run_id: str) -> None:
    await append_ok(store, run_id, [run_created()])
    before = await snapshot(store, run_id)
    result = await append_one(store, run_id, run_created())
    assert result.duplicate
    assert not result.appended
    assert result.event_id is None
    assert await snapshot(store, run_id) == before
    assert len(before[0]) == 1


async def test_run_created_for_another_workflow_is_a_mismatch(
    store: EventStore, run_id: str
) -> None:
    await append_ok(store, run_id, [run_created()])
    before = await snapshot(store, run_id)
    with pytest.raises(WorkflowMismatchError) as info:
        await store.append(run_id, [run_created("billing.refund")])
    assert run_id in str(info.value)
    assert WF in str(info.value)
    assert "billing.refund" in str(info.value)
    assert await snapshot(store, run_id) == before


@pytest.mark.parametrize(
    "event",
    [
        ev(E.RUN_STARTED),
        ev(E.RUN_COMPLETED),
        step_created("s1"),
        ev(E.WAIT_CREATED, "s1", {"due": 1}),
        ev(E.HOOK_CREATED, "h1", {"token": "t"}),
    ],
    ids=lambda e: e.type.value,
)
async def test_event_before_run_created_is_run_not_found(
    store: EventStore, run_id: str, event: NewEvent
) -> None:
    with pytest.raises(RunNotFoundError) as info:
        await store.append(run_id, [event])
    assert info.value.run_id == run_id
    assert run_id in str(info.value)
    assert await store.read(run_id) == []
    assert await store.status(run_id) == {}
    assert not await store.exists(run_id)


async def test_run_not_found_even_when_batch_starts_with_a_later_run_created(
    store: EventStore, run_id: str
) -> None:
    with pytest.raises(RunNotFoundError):
        await store.append(run_id, [ev(E.RUN_STARTED), run_created()])
    assert await store.read(run_id) == []


@pytest.mark.parametrize(
    "event",
    [
        step_created("s1"),
        ev(E.WAIT_CREATED, "w1", {"due": 1}),
        ev(E.HOOK_CREATED, "h1", {"token": "t"}),
    ],
    ids=lambda e: e.type.value,
)
async def test_entity_events_before_run_started_are_illegal(
    store: EventStore, run_id: str, event: NewEvent
) -> None:
    await append_ok(store, run_id, [run_created()])
    before = await snapshot(store, run_id)
    with pytest.raises(IllegalTransitionError) as info:
        await store.append(run_id, [event])
    assert not isinstance(info.value, RunClosedError)
    assert (info.value.run_id, info.value.entity, info.value.current) == (run_id, "run", "created")
    assert info.value.event_type == event.type.value
    assert await snapshot(store, run_id) == before


# --- steps ------------------------------------------------------------------------------


async def test_illegal_step_transition_names_everything_and_writes_nothing(
    store: EventStore, run_id: str
) -> None:
    await started_run(store, run_id)
    await append_ok(store, run_id, [step_created("s1")])
    before = await snapshot(store, run_id)
    with pytest.raises(IllegalTransitionError) as info:
        await store.append(run_id, [ev(E.STEP_COMPLETED, "s1", {"result": 1}, attempt=1)])
    err = info.value
    assert type(err) is IllegalTransitionError
    assert (err.run_id, err.entity, err.current, err.event_type) == (
        run_id,
        "step s1",
        "created",
        "step_completed",
    )
    message = str(err)
    assert repr(run_id) in message
    assert "step s1" in message
    assert "'created'" in message
    assert "'step_completed'" in message
    assert await snapshot(store, run_id) == before


async def test_batch_with_an_illegal_event_is_atomic(store: EventStore, run_id: str) -> None:
    await started_run(store, run_id)
    before = await snapshot(store, run_id)
    active_before = await store.active_runs(shard_of(run_id, store.names.shards))
    batch = [
        step_created("s1"),
        ev(E.WAIT_CREATED, "w1", {"due": 5}),
        ev(E.STEP_COMPLETED, "s2", {"result": 0}, attempt=1),  # s2 was never created
    ]
    with pytest.raises(IllegalTransitionError) as info:
        await store.append(run_id, batch)
    assert info.value.entity == "step s2"
    assert info.value.current == "absent"
    events, status = await snapshot(store, run_id)
    assert len(events) == len(before[0]) == 2
    assert status == before[1]
    assert "c:s1" not in status
    assert "c:w1" not in status
    assert await store.active_runs(shard_of(run_id, store.names.shards)) == active_before
    # The valid part alone is still accepted afterwards: nothing half-applied remains.
    await append_ok(store, run_id, batch[:2])


async def test_later_events_in_a_batch_see_earlier_ones(store: EventStore, run_id: str) -> None:
    ids = await append_ok(
        store,
        run_id,
        [
            run_created(),
            ev(E.RUN_STARTED),
            step_created("s1"),
            ev(E.STEP_STARTED, "s1", attempt=1),
            ev(E.STEP_COMPLETED, "s1", {"result": "r"}, attempt=1),
        ],
    )
    assert len(ids) == 5
    # Within one batch a repeat of the terminal event is a duplicate too.
    results = await store.append(
        run_id, [ev(E.WAIT_CREATED, "w1"), ev(E.WAIT_CREATED, "w1"), ev(E.WAIT_COMPLETED, "w1")]
    )
    assert [r.appended for r in results] == [True, False, True]
    assert results[1].event_id is None


async def test_repeated_terminal_step_event_is_a_duplicate(store: EventStore, run_id: str) -> None:
    await started_step(store, run_id)
    first = await append_one(store, run_id, ev(E.STEP_COMPLETED, "s1", {"result": 1}, attempt=1))
    assert first.appended
    before = await snapshot(store, run_id)
    for late in (
        ev(E.STEP_COMPLETED, "s1", {"result": 2}, attempt=1),
        ev(E.STEP_FAILED, "s1", {"error": {"type": "E"}}, attempt=1),
        ev(E.STEP_RETRYING, "s1", {"due": 1}, attempt=1),
        ev(E.STEP_STARTED, "s1", attempt=2),
        step_created("s1"),
    ):
        result = await append_one(store, run_id, late)
        assert (result.duplicate, result.event_id) == (True, None), late.type
    assert await snapshot(store, run_id) == before
    completed = [e for e in before[0] if e.type is E.STEP_COMPLETED]
    assert [e.data["result"] for e in completed] == [1]


async def test_repeated_step_started_is_written(store: EventStore, run_id: str) -> None:
    await started_step(store, run_id)
    again = await append_one(store, run_id, ev(E.STEP_STARTED, "s1", attempt=1))
    assert again.appended
    assert again.event_id is not None
    events = await store.read(run_id)
    assert [e.type for e in events].count(E.STEP_STARTED) == 2
    status = await store.status(run_id)
    assert (status["c:s1"], status["a:s1"]) == ("step.started", "1")


async def test_attempt_guards(store: EventStore, run_id: str) -> None:
    await started_step(store, run_id)
    retrying = await append_one(store, run_id, ev(E.STEP_RETRYING, "s1", {"due": 9}, attempt=1))
    assert retrying.appended
    # A redelivered message of attempt 1 after its retry was decided: stale.
    stale_start = await append_one(store, run_id, ev(E.STEP_STARTED, "s1", attempt=1))
    assert stale_start.duplicate
    assert (await store.status(run_id))["c:s1"] == "step.retrying"
    # The next attempt starts.
    next_start = await append_one(store, run_id, ev(E.STEP_STARTED, "s1", attempt=2))
    assert next_start.appended
    status = await store.status(run_id)
    assert (status["c:s1"], status["a:s1"]) == ("step.started", "2")
    # A late retry decision of attempt 1 while attempt 2 runs: stale, nothing written.
    before = await snapshot(store, run_id)
    stale_retry = await append_one(store, run_id, ev(E.STEP_RETRYING, "s1", {"due": 1}, attempt=1))
    assert stale_retry.duplicate
    stale_fail = await append_one(store, run_id, ev(E.STEP_FAILED, "s1", attempt=1))
    assert stale_fail.duplicate
    assert await snapshot(store, run_id) == before
    # The current attempt's outcome is written.
    done = await append_one(store, run_id, ev(E.STEP_FAILED, "s1", {"error": {}}, attempt=2))
    assert done.appended
    types = [e.type for e in await store.read(run_id)]
    assert types[-4:] == [E.STEP_STARTED, E.STEP_RETRYING, E.STEP_STARTED, E.STEP_FAILED]


async def test_anything_after_run_completed_is_closed(store: EventStore, run_id: str) -> None:
    await started_step(store, run_id)
    await append_ok(store, run_id, [ev(E.RUN_COMPLETED, data={"result": None})])
    before = await snapshot(store, run_id)
    for late in (
        ev(E.STEP_COMPLETED, "s1", {"result": 1}, attempt=1),
        step_created("s9"),
        ev(E.WAIT_CREATED, "w1"),
        ev(E.HOOK_CREATED, "h1"),
        ev(E.RUN_FAILED),
        ev(E.RUN_CANCELLED),
    ):
        with pytest.raises(RunClosedError) as info:
            await store.append(run_id, [late])
        err = info.value
        assert isinstance(err, IllegalTransitionError)
        assert (err.run_id, err.entity, err.current, err.event_type) == (
            run_id,
            "run",
            "completed",
            late.type.value,
        )
    again = await append_one(store, run_id, ev(E.RUN_COMPLETED, data={"result": "other"}))
    assert again.duplicate
    assert await snapshot(store, run_id) == before


# --- waits, hooks, kinds ----------------------------------------------------------------


async def test_wait_completes_exactly_once(store: EventStore, run_id: str) -> None:
    await started_run(store, run_id)
    with pytest.raises(IllegalTransitionError) as info:
        await store.append(run_id, [ev(E.WAIT_COMPLETED, "w1")])
    assert (info.value.entity, info.value.current) == ("wait w1", "absent")
    assert (await append_one(store, run_id, ev(E.WAIT_CREATED, "w1", {"due": 1}))).appended
    assert (await append_one(store, run_id, ev(E.WAIT_CREATED, "w1", {"due": 2}))).duplicate
    assert (await append_one(store, run_id, ev(E.WAIT_COMPLETED, "w1"))).appended
    assert (await append_one(store, run_id, ev(E.WAIT_COMPLETED, "w1"))).duplicate
    types = [e.type for e in await store.read(run_id)]
    assert types.count(E.WAIT_CREATED) == 1
    assert types.count(E.WAIT_COMPLETED) == 1
    assert (await store.status(run_id))["c:w1"] == "wait.completed"


async def test_hook_received_repeats_while_created_only(store: EventStore, run_id: str) -> None:
    await started_run(store, run_id)
    with pytest.raises(IllegalTransitionError):
        await store.append(run_id, [ev(E.HOOK_RECEIVED, "h1", {"payload": 0})])
    await append_ok(store, run_id, [ev(E.HOOK_CREATED, "h1", {"token": "tok"})])
    for i in range(3):
        result = await append_one(store, run_id, ev(E.HOOK_RECEIVED, "h1", {"payload": i}))
        assert result.appended
    assert (await store.status(run_id))["c:h1"] == "hook.created"
    await append_ok(store, run_id, [ev(E.HOOK_DISPOSED, "h1")])
    assert (await store.status(run_id))["c:h1"] == "hook.disposed"
    before = await snapshot(store, run_id)
    with pytest.raises(IllegalTransitionError) as info:
        await store.append(run_id, [ev(E.HOOK_RECEIVED, "h1", {"payload": 9})])
    assert (info.value.entity, info.value.current, info.value.event_type) == (
        "hook h1",
        "disposed",
        "hook_received",
    )
    assert (await append_one(store, run_id, ev(E.HOOK_DISPOSED, "h1"))).duplicate
    assert await snapshot(store, run_id) == before
    received = [e.data["payload"] for e in before[0] if e.type is E.HOOK_RECEIVED]
    assert received == [0, 1, 2]


async def test_kind_mismatch_on_a_correlation_id_is_illegal(store: EventStore, run_id: str) -> None:
    await started_run(store, run_id)
    await append_ok(store, run_id, [ev(E.WAIT_CREATED, "x1", {"due": 1})])
    before = await snapshot(store, run_id)
    with pytest.raises(IllegalTransitionError) as info:
        await store.append(run_id, [ev(E.STEP_STARTED, "x1", attempt=1)])
    assert (info.value.entity, info.value.current, info.value.event_type) == (
        "step x1",
        "wait created",
        "step_started",
    )
    with pytest.raises(IllegalTransitionError):
        await store.append(run_id, [step_created("x1")])
    assert await snapshot(store, run_id) == before


# --- batches and reads ------------------------------------------------------------------


async def test_a_batch_of_1000_step_created_is_one_call(store: EventStore, run_id: str) -> None:
    await started_run(store, run_id)
    batch = [step_created(f"s{i}", name=f"step{i}") for i in range(1000)]
    results = await store.append(run_id, batch)
    assert len(results) == 1000
    assert all(r.appended for r in results)
    ids = [r.event_id for r in results]
    assert all(isinstance(i, str) for i in ids)
    keys = [id_key(i) for i in ids if i is not None]
    assert keys == sorted(keys)
    assert len(set(keys)) == 1000
    events = await store.read(run_id)
    assert len(events) == 1002
    assert [e.id for e in events[2:]] == ids
    assert [e.corr for e in events[2:]] == [f"s{i}" for i in range(1000)]
    assert [e.data["name"] for e in events[2:]] == [f"step{i}" for i in range(1000)]
    status = await store.status(run_id)
    assert status["n"] == "1002"
    assert status["c:s999"] == "step.created"
    assert status["last"] == ids[-1]


async def test_read_after_returns_strictly_later_events(store: EventStore, run_id: str) -> None:
    await started_run(store, run_id)
    await append_ok(store, run_id, [step_created(f"s{i}") for i in range(5)])
    events = await store.read(run_id)
    assert len(events) == 7
    assert await store.read(run_id, after=START) == events
    for i, event in enumerate(events):
        assert await store.read(run_id, after=event.id) == events[i + 1 :]
    assert await store.read(run_id, after=events[-1].id) == []
    assert await store.read(run_id, after=events[1].id, count=2) == events[2:4]
    assert await store.read(run_id, count=3) == events[:3]
    assert await store.read(new_run_id()) == []


# --- appends conditional on the log (based_on) ------------------------------------------


async def test_an_append_based_on_an_entry_the_log_holds_is_written(
    store: EventStore, run_id: str
) -> None:
    await started_run(store, run_id)
    first, last = [e.id for e in await store.read(run_id)]
    (result,) = await store.append(run_id, [step_created("s1")], based_on=last)
    assert result.appended
    # Entries written after the basis (a worker's, meanwhile) do not matter: only the basis.
    (result,) = await store.append(run_id, [step_created("s2")], based_on=first)
    assert result.appended


async def test_an_append_based_on_an_entry_the_log_lost_is_refused_whole(
    store: EventStore, run_id: str
) -> None:
    await started_run(store, run_id)
    await append_ok(store, run_id, [step_created("s1")])
    before = await snapshot(store, run_id)
    ms, seq = id_key(before[0][-1].id)
    for gone in (f"{ms}-{seq + 1}", f"{ms + 5}-0", f"{id_key(before[0][0].id)[0]}-999"):
        with pytest.raises(LogTruncatedError) as info:
            await store.append(run_id, [step_created("s2"), ev(E.RUN_COMPLETED)], based_on=gone)
        assert info.value.based_on == gone
        assert info.value.run_id == run_id
        assert "nothing written" in str(info.value)
    assert await snapshot(store, run_id) == before


@pytest.mark.parametrize(
    "based_on", ["", "abc", "1-2-3", "12", "-1-0", "1-", f"{'9' * 20}-0", f"1-{'9' * 20}", "1 -2"]
)
async def test_a_malformed_based_on_is_an_argument_error(
    store: EventStore, run_id: str, based_on: str
) -> None:
    await started_run(store, run_id)
    before = await snapshot(store, run_id)
    with pytest.raises(AppendArgumentError) as info:
        await store.append(run_id, [step_created("s1")], based_on=based_on)
    assert info.value.field == "based_on"
    assert await snapshot(store, run_id) == before


async def test_an_append_based_on_anything_to_a_missing_run_is_not_found(
    store: EventStore, run_id: str
) -> None:
    with pytest.raises(RunNotFoundError):
        await store.append(run_id, [step_created("s1")], based_on="1-0")


# --- presence ---------------------------------------------------------------------------


async def test_presence_marks_say_who_is_alive_and_what_runs_they_hold(store: EventStore) -> None:
    await store.mark_alive("host:1", 60_000, {"run-a", "run-b"})
    await store.mark_alive("host:2", 60_000)  # says nothing of its runs
    await store.mark_alive("host:3", 60_000, set())
    await store.mark_alive("host:4", 1)
    await asyncio.sleep(0.05)
    found = await store.presence(["host:1", "host:2", "host:3", "host:4", "host:5", "host:1"])
    assert found == {"host:1": frozenset({"run-a", "run-b"}), "host:2": None, "host:3": frozenset()}
    assert await store.alive(["host:1", "host:4", "host:3"]) == {"host:1", "host:3"}
    await store.mark_alive("host:1", 60_000, {"run-c"})  # a renewal replaces the list
    assert await store.presence(["host:1"]) == {"host:1": frozenset({"run-c"})}
    await store.mark_gone("host:1")
    assert await store.presence(["host:1"]) == {}


# --- wait -------------------------------------------------------------------------------


async def test_wait_wakes_promptly_on_a_concurrent_append(store: EventStore, run_id: str) -> None:
    await started_run(store, run_id)
    last = (await store.read(run_id))[-1].id

    async def append_later() -> list[str]:
        await asyncio.sleep(0.2)
        return await append_ok(store, run_id, [step_created("s1")])

    loop = asyncio.get_running_loop()
    task = asyncio.create_task(append_later())
    began = loop.time()
    got = await store.wait(run_id, last, timeout=5)
    elapsed = loop.time() - began
    new_ids = await task
    assert 0.15 <= elapsed < 2.0
    assert [e.id for e in got] == new_ids
    assert [(e.type, e.corr) for e in got] == [(E.STEP_CREATED, "s1")]


async def test_wait_returns_empty_after_its_timeout(store: EventStore, run_id: str) -> None:
    await started_run(store, run_id)
    last = (await store.read(run_id))[-1].id
    loop = asyncio.get_running_loop()
    began = loop.time()
    got = await store.wait(run_id, last, timeout=0.3)
    elapsed = loop.time() - began
    assert got == []
    assert 0.25 <= elapsed < 2.0


async def test_wait_returns_at_once_when_events_already_follow(
    store: EventStore, run_id: str
) -> None:
    await started_run(store, run_id)
    events = await store.read(run_id)
    loop = asyncio.get_running_loop()
    began = loop.time()
    got = await store.wait(run_id, events[0].id, timeout=5)
    assert loop.time() - began < 1.0
    assert got == events[1:]


# --- derived indexes and the fold -------------------------------------------------------


async def test_active_runs_hold_unfinished_runs_only(store: EventStore) -> None:
    unfinished, finished = new_run_id(), new_run_id()
    await started_run(store, unfinished)
    await started_run(store, finished)
    shards = store.names.shards
    finished_shard = shard_of(finished, shards)
    assert finished in dict(await store.active_runs(finished_shard))
    await append_ok(store, finished, [ev(E.RUN_COMPLETED, data={"result": 1})])

    active = dict(await store.active_runs(shard_of(unfinished, shards)))
    assert unfinished in active
    assert abs(active[unfinished] - time.time() * 1000) < 60_000
    assert finished not in dict(await store.active_runs(finished_shard))
    everywhere = [run for s in range(shards) for run, _ in await store.active_runs(s)]
    assert sorted(everywhere) == [unfinished]
    # A duplicate (nothing written) does not put a finished run back.
    assert (await append_one(store, finished, ev(E.RUN_COMPLETED))).duplicate
    assert finished not in dict(await store.active_runs(finished_shard))


async def test_active_runs_are_oldest_first_and_limited(store: EventStore) -> None:
    runs = [new_run_id() for _ in range(40)]
    by_shard: dict[int, list[str]] = {}
    for run in runs:
        await append_ok(store, run, [run_created()])
        by_shard.setdefault(shard_of(run, store.names.shards), []).append(run)
        await asyncio.sleep(0.002)
    shard, members = max(by_shard.items(), key=lambda kv: len(kv[1]))
    assert len(members) >= 3
    listed = await store.active_runs(shard)
    assert [run for run, _ in listed] == members
    scores = [score for _, score in listed]
    assert scores == sorted(scores)
    assert [run for run, _ in await store.active_runs(shard, limit=2)] == members[:2]


async def test_a_deferred_check_moves_the_score_unless_the_run_moved(store: EventStore) -> None:
    run, done = new_run_id(), new_run_id()
    await started_run(store, run)
    shard = shard_of(run, store.names.shards)
    ((_, seen),) = [(r, s) for r, s in await store.stale_runs(shard, 2**62, 1000) if r == run]
    assert await store.defer_check(run, seen, seen + 60_000)
    assert dict(await store.active_runs(shard))[run] == seen + 60_000
    assert run not in dict(await store.stale_runs(shard, seen + 59_999, 1000))
    # Not what the caller saw (moved meanwhile): the newer score wins.
    assert not await store.defer_check(run, seen, seen + 1)
    # Progress scores the run now again.
    await append_ok(store, run, [step_created("s1")])
    assert dict(await store.active_runs(shard))[run] < seen + 60_000
    # A finished run is never put back.
    await started_run(store, done)
    done_shard = shard_of(done, store.names.shards)
    ((_, done_seen),) = [
        (r, s) for r, s in await store.stale_runs(done_shard, 2**62, 1000) if r == done
    ]
    await append_ok(store, done, [ev(E.RUN_COMPLETED, data={"result": 1})])
    assert not await store.defer_check(done, done_seen, done_seen + 1)
    assert done not in dict(await store.active_runs(done_shard))
    assert await store.run_tails([run, done, "nope"]) == [
        ("started", (await store.read(run))[-1].id),
        ("completed", (await store.read(done))[-1].id),
        ("", ""),
    ]


async def test_list_runs_is_newest_first_filtered_and_limited(store: EventStore) -> None:
    made: list[str] = []
    for i in range(30):
        run = new_run_id()
        workflow = "orders.refund" if i % 3 == 0 else WF
        await append_ok(store, run, [run_created(workflow)])
        if i % 5 == 0:
            await append_ok(store, run, [ev(E.RUN_STARTED), ev(E.RUN_COMPLETED)])
        made.append(run)
        await asyncio.sleep(0.002)
    ours = set(made)
    listed = [r for r in await store.list_runs(limit=1000) if r.run_id in ours]
    assert [r.run_id for r in listed] == made[::-1]
    assert [r.created_ms for r in listed] == sorted((r.created_ms for r in listed), reverse=True)
    first = listed[0]
    assert (first.workflow, first.status, first.events) == (WF, "created", 1)
    assert first.updated_ms >= first.created_ms
    done = await store.list_runs(status="completed", limit=1000)
    completed = [r for r in done if r.run_id in ours]
    assert [r.run_id for r in completed] == [r for i, r in enumerate(made) if i % 5 == 0][::-1]
    assert all(r.events == 3 for r in completed)
    refunds = [
        r for r in await store.list_runs(workflow="orders.refund", limit=1000) if r.run_id in ours
    ]
    assert [r.run_id for r in refunds] == [r for i, r in enumerate(made) if i % 3 == 0][::-1]
    since = listed[9].created_ms
    recent = [r for r in await store.list_runs(since_ms=since, limit=1000) if r.run_id in ours]
    assert [r.run_id for r in recent] == [r.run_id for r in listed if r.created_ms >= since]
    assert len(await store.list_runs(limit=4)) == 4
    assert [await store.is_listed(r) for r in made] == [True] * len(made)
    assert not await store.is_listed(new_run_id())


async def test_fold_of_read_gives_the_run_state(store: EventStore, run_id: str) -> None:
    err = {"type": "TimeoutError", "message": "slow", "traceback": "tb"}
    await append_ok(store, run_id, [run_created(), ev(E.RUN_STARTED)])
    await append_ok(store, run_id, [step_created("s1", "charge"), step_created("s2", "ship")])
    await append_ok(
        store,
        run_id,
        [
            ev(E.STEP_STARTED, "s1", attempt=1),
            ev(E.STEP_RETRYING, "s1", {"error": err, "due": 12345}, attempt=1),
            ev(E.STEP_STARTED, "s1", attempt=2),
            ev(E.STEP_COMPLETED, "s1", {"result": {"charged": 10}}, attempt=2),
            ev(E.STEP_STARTED, "s2", attempt=1),
            ev(E.STEP_FAILED, "s2", {"error": err}, attempt=1),
            ev(E.WAIT_CREATED, "w3", {"due": 777}),
            ev(E.WAIT_COMPLETED, "w3"),
            ev(E.HOOK_CREATED, "h4", {"token": "tok", "metadata": {"m": 1}}),
            ev(E.HOOK_RECEIVED, "h4", {"payload": 1}),
            ev(E.HOOK_RECEIVED, "h4", {"payload": 2}),
            ev(E.HOOK_DISPOSED, "h4"),
            ev(E.RUN_COMPLETED, data={"result": ["done", 10]}),
        ],
    )
    events = await store.read(run_id)
    state = fold(run_id, events)
    assert state.run_id == run_id
    assert (state.workflow, state.status, state.finished) == (WF, "completed", True)
    assert state.args == [1, "two"]
    assert state.kwargs == {"k": 3}
    assert state.result == ["done", 10]
    assert state.event_count == len(events) == 17
    assert state.last_event_id == events[-1].id
    assert state.created_ts == events[0].ts
    assert state.finished_ts == events[-1].ts

    s1, s2 = state.steps["s1"], state.steps["s2"]
    assert (s1.name, s1.queue, s1.status, s1.attempt) == ("charge", "default", "completed", 2)
    assert s1.result == {"charged": 10}
    assert s1.retry_due is None
    assert codec.decode(s1.args) == ["s1"]
    assert (s2.name, s2.status, s2.attempt) == ("ship", "failed", 1)
    assert s2.error is not None
    assert (s2.error.type, s2.error.message, s2.error.traceback) == ("TimeoutError", "slow", "tb")
    assert (state.waits["w3"].status, state.waits["w3"].due) == ("completed", 777)
    hook = state.hooks["h4"]
    assert (hook.token, hook.metadata, hook.received, hook.status) == (
        "tok",
        {"m": 1},
        2,
        "disposed",
    )

    # Folding a prefix gives the state at that point.
    mid = fold(run_id, events[:5])
    assert mid.status == "started"
    assert (mid.steps["s1"].status, mid.steps["s1"].retry_due) == ("started", None)
    retrying = fold(run_id, events[:6])
    assert (retrying.steps["s1"].status, retrying.steps["s1"].retry_due) == ("retrying", 12345)
    assert retrying.steps["s1"].attempt == 1


# --- concurrency ------------------------------------------------------------------------


async def test_concurrent_identical_completions_record_once(store: EventStore, run_id: str) -> None:
    await started_step(store, run_id)

    async def complete(worker: int) -> AppendResult:
        return await append_one(
            store, run_id, ev(E.STEP_COMPLETED, "s1", {"result": worker}, attempt=1)
        )

    results = await asyncio.wait_for(asyncio.gather(*(complete(i) for i in range(20))), 5)
    written = [r for r in results if r.appended]
    assert len(written) == 1
    assert sum(r.duplicate for r in results) == 19
    completed = [e for e in await store.read(run_id) if e.type is E.STEP_COMPLETED]
    assert len(completed) == 1
    assert completed[0].id == written[0].event_id
    assert (await store.status(run_id))["c:s1"] == "step.completed"


# --- parity: one table of cases from RULES, both stores, the same verdicts ---------------

ENTITY_KINDS = ("step", "wait", "hook")
ENTITY_TYPES = [t for t in EventType if t.kind != "run"]
ATTEMPTS: dict[str, tuple[int | None, ...]] = {
    "step": (None, 1, 2),
    "wait": (None,),
    "hook": (None,),
}


def make(type: EventType, corr: str, attempt: int | None, workflow: str = WF) -> NewEvent:
    if type is E.RUN_CREATED:
        return run_created(workflow)
    return ev(type, corr, {"n": 1}, attempt=attempt)


@dataclass(frozen=True)
class Case:
    """Prior events (all of which must be written), then one new event."""

    label: str
    prior: tuple[tuple[EventType, str, int | None], ...]
    new: tuple[EventType, str, int | None, str]
    expected: str  # "written", "duplicate" or an exception class name


def expected_verdict(
    run_state: str,
    entity: tuple[str, str, int],
    type: EventType,
    attempt: int | None,
    workflow: str,
) -> str:
    """The verdict the table (and DESIGN.md) prescribe, worked out independently."""
    kind = type.kind
    if kind == "run":
        if type is E.RUN_CREATED and run_state != ABSENT and workflow != WF:
            return WorkflowMismatchError.__name__
        rule = RULES["run"].get(run_state, {}).get(type)
        if rule is None:
            if run_state == ABSENT:
                return RunNotFoundError.__name__
            if run_state in RUN_TERMINAL_STATES:
                return RunClosedError.__name__
            return IllegalTransitionError.__name__
        return "written" if rule.action is Action.WRITE else "duplicate"
    if run_state == ABSENT:
        return RunNotFoundError.__name__
    if run_state in RUN_TERMINAL_STATES:
        return RunClosedError.__name__
    if run_state != "started":
        return IllegalTransitionError.__name__
    stored_kind, state, recorded = entity
    if state != ABSENT and stored_kind != kind:
        return IllegalTransitionError.__name__
    rule = RULES[kind].get(state, {}).get(type)
    if rule is None or rule.action is Action.ILLEGAL:
        return IllegalTransitionError.__name__
    if rule.action is Action.DUP:
        return "duplicate"
    new = attempt or 0
    if rule.guard is Guard.GE and new < recorded:
        return "duplicate"
    if rule.guard is Guard.GT and new <= recorded:
        return "duplicate"
    return "written"


def run_paths() -> dict[str, list[EventType]]:
    """Shortest write-only path from nothing to every reachable run state."""
    paths: dict[str, list[EventType]] = {ABSENT: []}
    frontier = [ABSENT]
    while frontier:
        state = frontier.pop(0)
        for type, rule in RULES["run"].get(state, {}).items():
            if rule.action is Action.WRITE and rule.to not in paths:
                paths[rule.to] = [*paths[state], type]
                frontier.append(rule.to)
    return paths


def entity_paths(kind: str) -> dict[tuple[str, int], list[tuple[EventType, int | None]]]:
    """Shortest write-only path to every reachable (state, recorded attempt) of a kind."""
    start = (ABSENT, 0)
    paths: dict[tuple[str, int], list[tuple[EventType, int | None]]] = {start: []}
    frontier = [start]
    while frontier:
        state, recorded = frontier.pop(0)
        for type in RULES[kind].get(state, {}):
            for attempt in ATTEMPTS[kind]:
                verdict = expected_verdict("started", (kind, state, recorded), type, attempt, WF)
                if verdict != "written":
                    continue
                rule = RULES[kind][state][type]
                nxt = (rule.to, max(recorded, attempt or 0))
                if nxt not in paths:
                    paths[nxt] = [*paths[(state, recorded)], (type, attempt)]
                    frontier.append(nxt)
    return paths


def run_cases() -> list[Case]:
    cases = []
    for state, path in run_paths().items():
        prior = tuple((t, "", None) for t in path)
        for type in EventType:
            corr = "" if type.kind == "run" else "x1"
            attempt = 1 if type.kind == "step" else None
            expected = expected_verdict(state, ("", ABSENT, 0), type, attempt, WF)
            cases.append(
                Case(
                    f"run {state or 'absent'} + {type.value}",
                    prior,
                    (type, corr, attempt, WF),
                    expected,
                )
            )
        expected = expected_verdict(state, ("", ABSENT, 0), E.RUN_CREATED, None, "other.wf")
        cases.append(
            Case(
                f"run {state or 'absent'} + run_created(other)",
                prior,
                (E.RUN_CREATED, "", None, "other.wf"),
                expected,
            )
        )
    return cases


def entity_cases(kind: str) -> list[Case]:
    cases = []
    base = ((E.RUN_CREATED, "", None), (E.RUN_STARTED, "", None))
    for (state, recorded), path in entity_paths(kind).items():
        prior = base + tuple((t, "c1", a) for t, a in path)
        for type in ENTITY_TYPES:
            for attempt in ATTEMPTS[type.kind]:
                expected = expected_verdict("started", (kind, state, recorded), type, attempt, WF)
                label = f"{kind} {state or 'absent'}@{recorded} + {type.value}@{attempt}"
                cases.append(Case(label, prior, (type, "c1", attempt, WF), expected))
    return cases


def cases_for(kind: str) -> list[Case]:
    return run_cases() if kind == "run" else entity_cases(kind)


def comparable_status(status: dict[str, str]) -> dict[str, str]:
    """The status hash without clock readings and ids, which differ between stores."""
    # Clock values and entry ids differ between stores; x:<corr> is an entry id and
    # h:<corr> and end (the finish time) clock readings, so only their presence is compared.
    return {
        k: (v if not k.startswith(("x:", "h:", "end")) else "present")
        for k, v in status.items()
        if k not in ("created", "last")
    }


async def verdict_of(store: EventStore, run_id: str, case: Case) -> tuple[str, str, Any]:
    prior = [make(t, c, a) for t, c, a in case.prior]
    if prior:
        await append_ok(store, run_id, prior)
    before = await snapshot(store, run_id)
    type, corr, attempt, workflow = case.new
    try:
        [result] = await store.append(run_id, [make(type, corr, attempt, workflow)])
    except EventLogError as exc:
        assert await snapshot(store, run_id) == before, f"{case.label}: error wrote something"
        return type_name(exc), str(exc), comparable_status(before[1])
    events, status = await snapshot(store, run_id)
    if result.duplicate:
        assert (events, status) == before, f"{case.label}: duplicate wrote something"
        return "duplicate", "", comparable_status(status)
    assert len(events) == len(before[0]) + 1
    assert events[-1].id == result.event_id
    assert (events[-1].type, events[-1].corr) == (type, corr)
    return "written", "", comparable_status(status)


def type_name(exc: BaseException) -> str:
    return type(exc).__name__


def test_parity_table_covers_every_state_and_event() -> None:
    for kind, states in RULES.items():
        paths = run_paths() if kind == "run" else entity_paths(kind)
        reached = {key if isinstance(key, str) else key[0] for key in paths}
        assert reached == set(states), kind
    assert len(run_cases()) == len(RULES["run"]) * (len(EventType) + 1)
    # Guards are exercised: the step table holds stale duplicates and fresh writes alike.
    step = entity_cases("step")
    assert any(c.new[0] is E.STEP_STARTED and c.expected == "duplicate" for c in step)
    assert any(c.new[0] is E.STEP_STARTED and c.expected == "written" for c in step)
    verdicts = {c.expected for kind in RULES for c in cases_for(kind)}
    assert verdicts == {
        "written",
        "duplicate",
        RunNotFoundError.__name__,
        RunClosedError.__name__,
        IllegalTransitionError.__name__,
        WorkflowMismatchError.__name__,
    }


@pytest.mark.integration
@pytest.mark.parametrize("kind", list(RULES))
async def test_both_stores_give_the_same_verdicts(
    kind: str, names: Names, redis_client: aioredis.Redis
) -> None:
    cases = cases_for(kind)
    assert len(cases) >= 20
    disagreements = []
    async with MemoryEventStore(names) as memory, RedisEventStore(redis_client, names) as redis:
        for case in cases:
            run_id = new_run_id()
            got_memory = await verdict_of(memory, run_id, case)
            got_redis = await verdict_of(redis, run_id, case)
            if got_memory != got_redis or got_memory[0] != case.expected:
                disagreements.append(
                    f"{case.label}: expected {case.expected}; "
                    f"memory {got_memory}; redis {got_redis}"
                )
    assert not disagreements, "\n".join(disagreements)


# --- hostile arguments: checked before anything is written (issue 11, items 2, 7, 8, 11) --


def _timer(kind: TimerKind, run: str, corr: str = "s1", attempt: int = 0) -> Timer:
    return Timer(kind, run, corr, attempt)


def _bad_last_events(run_id: str) -> dict[str, tuple[NewEvent, str]]:
    """One bad event per field the first pass checks, with the field it names."""
    wait = _timer(TimerKind.WAIT, run_id, "w9")
    other = _timer(TimerKind.WAIT, "another-run", "w9")
    return {
        "corr with a bar": (ev(E.WAIT_CREATED, "w|9", {"due": 1}), "corr"),
        "corr too long": (ev(E.WAIT_CREATED, "w" * 65, {"due": 1}), "corr"),
        "corr with a space": (ev(E.WAIT_CREATED, "w 9", {"due": 1}), "corr"),
        "corr not ascii": (ev(E.WAIT_CREATED, "é" * 40, {"due": 1}), "corr"),
        "workflow name too long in bytes": (
            NewEvent.of(E.RUN_STARTED, workflow="é" * 300),
            "key",
        ),
        "entity without corr": (ev(E.WAIT_CREATED, "", {"due": 1}), "corr"),
        "run event with corr": (ev(E.RUN_STARTED, "s1"), "corr"),
        "negative attempt": (ev(E.STEP_CREATED, "s9", attempt=-1), "attempt"),
        "attempt too large": (ev(E.STEP_CREATED, "s9", attempt=2**31), "attempt"),
        "token with a space": (NewEvent.of(E.HOOK_CREATED, "h9", {}, token="a b"), "key"),
        "token with a bar": (NewEvent.of(E.HOOK_CREATED, "h9", {}, token="a|b"), "key"),
        "workflow name too long": (NewEvent.of(E.RUN_STARTED, workflow="w" * 513), "key"),
        "fingerprint not hex": (NewEvent.of(E.STEP_CREATED, "s9", {}, fingerprint="x" * 32), "key"),
        "timer of another run": (
            NewEvent.of(E.WAIT_CREATED, "w9", {}, timer=other, due_ms=1),
            "timer",
        ),
        "due past year 9999": (
            NewEvent.of(E.WAIT_CREATED, "w9", {}, timer=wait, due_ms=MAX_DUE_MS + 1),
            "due",
        ),
        "delay over 100 years": (
            NewEvent.of(E.WAIT_CREATED, "w9", {}, timer=wait, delay_ms=MAX_DELAY_MS + 1),
            "due",
        ),
        "negative delay": (
            NewEvent.of(E.WAIT_CREATED, "w9", {}, timer=wait, delay_ms=-5),
            "due",
        ),
    }


async def _everything(store: EventStore, run_id: str) -> tuple[Any, ...]:
    """The run's stream, status hash and every index an append touches."""
    active = [await store.active_runs(shard) for shard in range(store.names.shards)]
    return (
        await snapshot(store, run_id),
        active,
        await store.count_timers(),
        await store.pending_timers(run_id),
        await store.hook_owner("tok-good"),
        await store.list_runs(limit=100),
    )


@pytest.mark.parametrize("case", sorted(_bad_last_events("r")))
async def test_a_batch_whose_last_event_is_bad_writes_nothing(
    store: EventStore, run_id: str, case: str
) -> None:
    """Redis does not roll a script back: every argument is checked before the first write."""
    await started_run(store, run_id)
    bad, field = _bad_last_events(run_id)[case]
    good = [
        step_created("s1"),
        NewEvent.of(E.HOOK_CREATED, "h1", {"token": "tok-good"}, token="tok-good"),
        NewEvent.of(
            E.WAIT_CREATED, "w1", {"due": 1}, timer=_timer(TimerKind.WAIT, run_id, "w1"), due_ms=1
        ),
    ]
    before = await _everything(store, run_id)
    with pytest.raises(AppendArgumentError) as info:
        await store.append(run_id, [*good, bad])
    assert isinstance(info.value, ValueError)
    assert (info.value.where, info.value.field) == ("event 4", field), str(info.value)
    assert "nothing written" in str(info.value)
    assert await _everything(store, run_id) == before


@pytest.mark.parametrize("bad", ["a|b", "a{b}", "a b", "", "x" * 201, "tab\there", "é"])
async def test_a_run_id_outside_the_rule_is_refused(store: EventStore, bad: str) -> None:
    with pytest.raises(AppendArgumentError) as info:
        await store.append(bad, [run_created()])
    assert info.value.field == "run_id"
    assert "letters, digits" in str(info.value)
    assert await store.status(bad) == {}
    assert await store.read(bad) == []
    assert await store.list_runs(limit=10) == []


async def test_two_hooks_with_one_token_in_one_batch_clash(store: EventStore, run_id: str) -> None:
    """The second hook of a batch sees the token the first one claims in the same batch."""
    await started_run(store, run_id)
    before = await snapshot(store, run_id)
    with pytest.raises(HookTokenConflictError) as info:
        await store.append(
            run_id,
            [
                NewEvent.of(E.HOOK_CREATED, "h1", {"token": "twin"}, token="twin"),
                NewEvent.of(E.HOOK_CREATED, "h2", {"token": "twin"}, token="twin"),
            ],
        )
    assert (info.value.token, info.value.owner_run, info.value.corr) == ("twin", run_id, "h2")
    assert await snapshot(store, run_id) == before
    assert await store.hook_owner("twin") is None
    # A hook recorded without claiming its token (a conflicted one) clashes with nothing.
    await append_ok(
        store,
        run_id,
        [
            NewEvent.of(E.HOOK_CREATED, "h1", {"token": "twin"}, token="twin"),
            NewEvent.of(E.HOOK_CREATED, "h2", {"token": "twin", "conflict": {"run": run_id}}),
            NewEvent.of(E.HOOK_DISPOSED, "h2", {"reason": "token conflict"}),
        ],
    )
    assert await store.hook_owner("twin") == (run_id, "h1")
    status = await store.status(run_id)
    assert status["k:h1"] == "twin" and "k:h2" not in status
    assert await verify_run(store, run_id) == []


async def test_step_started_must_carry_the_call_fingerprint_of_step_created(
    store: EventStore, run_id: str
) -> None:
    await started_run(store, run_id)
    honest = call_fingerprint("charge", codec.encode(["s1"]))
    forged = call_fingerprint("charge", codec.encode(["all the money"]))
    created = NewEvent.of(
        E.STEP_CREATED,
        "s1",
        {"name": "charge", "queue": "default", "args": codec.encode(["s1"]), "call_fp": honest},
        fingerprint=honest,
    )
    await append_ok(store, run_id, [created])
    assert (await store.status(run_id))["f:s1"] == honest
    before = await snapshot(store, run_id)
    for attempt in (1, 10**6):  # a huge attempt is no way around it
        with pytest.raises(StepMismatchError) as info:
            await store.append(
                run_id,
                [
                    NewEvent.of(E.STEP_STARTED, "s1", attempt=attempt, fingerprint=forged),
                    NewEvent.of(E.STEP_FAILED, "s1", {"error": {}}, attempt=attempt),
                ],
            )
        assert (info.value.run_id, info.value.corr) == (run_id, "s1")
        assert forged in str(info.value) and honest in str(info.value)
        assert await snapshot(store, run_id) == before
    started = NewEvent.of(E.STEP_STARTED, "s1", attempt=1, fingerprint=honest)
    await append_ok(store, run_id, [started])
    # Internal writers that send no fingerprint (a child's start) are not refused.
    await append_ok(store, run_id, [NewEvent.of(E.STEP_STARTED, "s1", attempt=2)])
    assert await verify_run(store, run_id) == []


async def test_the_fingerprint_check_sees_a_step_created_earlier_in_the_batch(
    store: EventStore, run_id: str
) -> None:
    await started_run(store, run_id)
    fp = call_fingerprint("charge", b"\x90")
    before = await snapshot(store, run_id)
    with pytest.raises(StepMismatchError):
        await store.append(
            run_id,
            [
                NewEvent.of(E.STEP_CREATED, "s1", {"name": "charge"}, fingerprint=fp),
                NewEvent.of(E.STEP_STARTED, "s1", attempt=1, fingerprint="0" * 32),
            ],
        )
    assert await snapshot(store, run_id) == before


async def test_steps_created_without_a_fingerprint_are_not_checked(
    store: EventStore, run_id: str
) -> None:
    """Runs created before step fingerprints existed keep running."""
    await started_run(store, run_id)
    await append_ok(store, run_id, [step_created("s1")])
    assert "f:s1" not in await store.status(run_id)
    started = NewEvent.of(E.STEP_STARTED, "s1", attempt=1, fingerprint="0" * 32)
    await append_ok(store, run_id, [started])


async def _plant_timer(store: EventStore, shard: int, member: str | bytes, due: int) -> None:
    """Put an entry straight into a timer shard, the way no ledgerflow code would."""
    if isinstance(store, RedisEventStore):
        await store.client.zadd(store.names.timer_shard(shard), {member: due})
    else:
        assert isinstance(store, MemoryEventStore) and isinstance(member, str)
        store._timers[shard][member] = due


async def test_claiming_timers_removes_malformed_entries_and_returns_the_rest(
    store: EventStore, run_id: str
) -> None:
    await started_run(store, run_id)
    healthy = _timer(TimerKind.WAIT, run_id, "w1")
    wait = NewEvent.of(E.WAIT_CREATED, "w1", {"due": 1}, timer=healthy, due_ms=1)
    await append_ok(store, run_id, [wait])
    shard = shard_of(run_id, store.names.shards)
    planted: list[str | bytes] = [
        f"wait|{run_id}|w2|0",  # four fields
        f"bogus|{run_id}|w2|0|0",  # no such kind
        "wait|a{b}|w2|0|0",  # not a run id
        f"wait|{run_id}|w2|-1|0",  # negative attempt
        "x" * 5000,
    ]
    if isinstance(store, RedisEventStore):
        planted.append(b"\xff\xfe|not utf-8")
    for member in planted:
        await _plant_timer(store, shard, member, 0)
    assert [t for t, _ in await store.pending_timers(run_id)] == [healthy]
    claimed = await store.claim_timers(100, 15_000)
    assert [d.timer for d in claimed] == [healthy]
    assert await store.count_timers() == 1
    assert await store.claim_timers(100, 15_000) == []  # leased, and nothing else left


async def test_delays_at_the_bounds_are_accepted(store: EventStore, run_id: str) -> None:
    await started_run(store, run_id)
    far = _timer(TimerKind.WAIT, run_id, "w1")
    longest = _timer(TimerKind.WAIT, run_id, "w2")
    await append_ok(
        store,
        run_id,
        [
            NewEvent.of(E.WAIT_CREATED, "w1", {"due": MAX_DUE_MS}, timer=far, due_ms=MAX_DUE_MS),
            NewEvent.of(E.WAIT_CREATED, "w2", {}, timer=longest, delay_ms=MAX_DELAY_MS),
        ],
    )
    pending = dict(await store.pending_timers(run_id))
    assert pending[far] == MAX_DUE_MS
    assert pending[longest] > MAX_DELAY_MS


@pytest.mark.integration
@pytest.mark.parametrize(
    ("argv_tail", "where", "field"),
    [
        (["2", "run_started", "", "", b"", "", "", "", ""], "batch", "n"),  # says 2, carries 1
        (["0"], "batch", "n"),
        (["1.5", "run_started", "", "", b"", "", "", "", ""], "batch", "n"),
        (["1", "run_exploded", "", "", b"", "", "", "", ""], "event 1", "type"),
        (["1", "wait_created", "w1", "", b"", "", "wait|RUN|w1|0|0", "", ""], "event 1", "timer"),
        (["1", "wait_created", "w1", "", b"", "", "", "+5", ""], "event 1", "timer"),
        (["1", "wait_created", "w1", "", b"", "", "wait|RUN|w1|0|0", "+1e3", ""], "event 1", "due"),
        # A retention is for run_created only, and bounded.
        (["1", "run_started", "", "", b"", "", "", "", "5000"], "event 1", "retention"),
        (["1", "run_created", "", "", b"", "wf", "", "", "999"], "event 1", "retention"),
        (["1", "step_created", "s1", "1.5", b"", "", "", "", ""], "event 1", "attempt"),
    ],
)
async def test_the_script_refuses_what_no_store_method_can_send(
    redis_client: aioredis.Redis, names: Names, argv_tail: list[Any], where: str, field: str
) -> None:
    """Raw script calls: a count that does not match, an unknown type, half a timer."""
    store = RedisEventStore(redis_client, names)
    run_id = new_run_id()
    await started_run(store, run_id)
    before = await snapshot(store, run_id)
    argv = [run_id, *(a.replace("RUN", run_id) if isinstance(a, str) else a for a in argv_tail)]
    reply = await store._append(keys=store._run_keys(run_id), args=argv)
    text = [r.decode() if isinstance(r, bytes) else r for r in reply]
    assert text[:4] == ["error", "badarg", where, field], text
    assert await snapshot(store, run_id) == before
    await store.close()


# --- offloaded values (eventlog.blobs) ----------------------------------------------------


def big_result(corr: str, size: int = 100_000) -> NewEvent:
    return NewEvent.of(
        E.STEP_COMPLETED, corr, {"result": b"r" * size}, attempt=1, offload=(("result",),)
    )


async def test_an_append_stores_its_offloaded_values_first(store: EventStore) -> None:
    run_id = new_run_id()
    await started_step(store, run_id)
    event = big_result("s1")
    (blob,) = event.blobs
    assert len(event.payload) < 1024
    await append_ok(store, run_id, [event])
    (read,) = [e for e in await store.read(run_id) if e.type is E.STEP_COMPLETED]
    assert read.data["result"] == blob.ref
    assert await store.blob_store.get_blob(run_id, blob.ref) == blob.data
    assert await store.blob_store.blob_digests(run_id) == {blob.ref.digest}
    assert await store.blob_store.blob_size(run_id, blob.ref.digest) == blob.ref.size
    assert await store.blob_store.blob_size(run_id, "0" * 64) is None
    with pytest.raises(BlobError, match="holds no blob"):
        await store.blob_store.get_blob(new_run_id(), blob.ref)


async def test_no_blob_is_stored_for_a_missing_or_ended_run(store: EventStore) -> None:
    missing = new_run_id()
    with pytest.raises(RunNotFoundError):
        await store.append(missing, [big_result("s1")])
    assert await store.blob_store.blob_digests(missing) == set()
    ended = new_run_id()
    await started_step(store, ended)
    await append_ok(store, ended, [ev(E.RUN_CANCELLED, data={"reason": "test"})])
    with pytest.raises(EventLogError):
        await store.append(ended, [big_result("s1")])
    assert await store.blob_store.blob_digests(ended) == set()


async def test_run_created_stores_the_offloaded_arguments_of_a_new_run(store: EventStore) -> None:
    run_id = new_run_id()
    created = NewEvent.of(
        E.RUN_CREATED,
        data={"workflow": WF, "args": [b"a" * 100_000, 1], "kwargs": {}},
        workflow=WF,
        envelope=2,
        offload=(("args", "*"), ("kwargs", "*")),
    )
    (blob,) = created.blobs
    await append_ok(store, run_id, [created])
    (first,) = await store.read(run_id)
    assert first.data["args"] == [blob.ref, 1]
    assert await store.blob_store.blob_digests(run_id) == {blob.ref.digest}


# --- removal (retention, deletion, archives) ---------------------------------------------


async def test_the_terminal_append_stamps_the_end_and_indexes_the_finished_run(
    store: EventStore, run_id: str
) -> None:
    """No retention of its own: the finished index, scored by the finish time (= end)."""
    await started_run(store, run_id)
    assert await store.removal_entry(run_id) is None
    assert "end" not in await store.status(run_id)
    await append_ok(store, run_id, [ev(E.RUN_COMPLETED, data={"result": 1})])
    events = await store.read(run_id)
    status = await store.status(run_id)
    assert status["end"] == str(events[-1].ts)
    assert await store.removal_entry(run_id) == (RemovalIndex.FINISHED, events[-1].ts)
    shard = shard_of(run_id, store.names.shards)
    finished = RemovalIndex.FINISHED
    assert await store.due_removals(finished, shard, events[-1].ts - 1, 10) == []
    assert await store.due_removals(finished, shard, events[-1].ts, 10) == [run_id]
    assert await store.due_removals(RemovalIndex.EXPIRE, shard, 2**50, 10) == []
    assert await store.count_due_removals(events[-1].ts, None) == 0
    assert await store.count_due_removals(events[-1].ts + 5, 5) == 1
    assert await store.count_due_removals(events[-1].ts + 5, 6) == 0
    assert await verify_run(store, run_id) == []


async def finished_run_with_everything(store: EventStore, run_id: str) -> None:
    """A cancelled run that still holds a hook token, a wait timer, a heartbeat timer and
    two output streams."""
    await started_run(store, run_id)
    for name in ("tokens", "progress"):
        await put(store, run_id, name, b"chunk")
    beat = Timer(TimerKind.HEARTBEAT, run_id, "s1", 1, 30_000)
    wait = Timer(TimerKind.WAIT, run_id, "w1")
    await append_ok(
        store,
        run_id,
        [
            step_created("s1"),
            NewEvent.of(
                E.STEP_STARTED,
                "s1",
                {"heartbeat_timeout": 30.0},
                attempt=1,
                timer=beat,
                delay_ms=30_000,
            ),
            NewEvent.of(E.WAIT_CREATED, "w1", {"due": 10**12}, timer=wait, due_ms=10**12),
            NewEvent.of(E.HOOK_CREATED, "h1", {"token": f"tok-{run_id}"}, token=f"tok-{run_id}"),
            ev(E.RUN_CANCELLED, data={"reason": "test"}),
        ],
    )


async def test_remove_run_removes_everything_of_a_finished_run(store: EventStore) -> None:
    gone, kept = new_run_id(), new_run_id()
    await finished_run_with_everything(store, gone)
    await finished_run_with_everything(store, kept)
    assert {t.member for t, _ in await store.pending_timers(gone)}  # armed before removal
    kept_before = await snapshot(store, kept), await store.pending_timers(kept)

    assert await store.remove_run(gone) is RemoveOutcome.REMOVED

    assert await snapshot(store, gone) == ([], {})
    assert not await store.exists(gone)
    assert await store.run_tail(gone) == ("", "")
    assert not await store.is_listed(gone) and not await store.is_active(gone)
    assert await store.removal_entry(gone) is None
    assert await store.pending_timers(gone) == []
    assert await store.hook_owner(f"tok-{gone}") is None
    assert await store.output_names(gone) == []
    assert await store.read_output(gone, "tokens", 0) == []
    assert await store.output_names(kept) == ["progress", "tokens"]
    assert gone not in {r.run_id for r in await store.list_runs(limit=100)}
    with pytest.raises(RunNotFoundError):
        await store.append(gone, [ev(E.RUN_STARTED)])
    # Another run's log, hash, token and timers are untouched.
    assert (await snapshot(store, kept), await store.pending_timers(kept)) == kept_before
    assert await store.hook_owner(f"tok-{kept}") == (kept, "h1")
    # Removing again finds nothing.
    assert await store.remove_run(gone) is RemoveOutcome.NOT_FOUND


async def test_remove_runs_removes_a_page_as_remove_run_does(
    store: EventStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The janitor's page at once: every finished run whole, a live one refused and an
    unknown one not found, in the order asked; each run's size before. (The Redis store
    reads the logs in pipelines of a bounded number of events: here a few runs each.)"""
    monkeypatch.setattr(redis_store, "REMOVE_READ_EVENTS", 10)
    finished = [new_run_id() for _ in range(3)]
    for run_id in finished:
        await finished_run_with_everything(store, run_id)
    live, unknown = new_run_id(), new_run_id()
    await started_step(store, live)
    live_before = await snapshot(store, live)
    page = [finished[0], live, finished[1], unknown, finished[2]]
    sizes = await store.runs_bytes(page)
    assert sizes == [await store.run_bytes(run_id) for run_id in page]
    assert sizes[3] == 0 and all(sizes[i] > 0 for i in (0, 1, 2, 4))

    assert await store.remove_runs(page) == [
        RemoveOutcome.REMOVED,
        RemoveOutcome.LIVE,
        RemoveOutcome.REMOVED,
        RemoveOutcome.NOT_FOUND,
        RemoveOutcome.REMOVED,
    ]
    for run_id in finished:
        assert await snapshot(store, run_id) == ([], {})
        assert await store.output_names(run_id) == []
        assert await store.pending_timers(run_id) == []
        assert await store.hook_owner(f"tok-{run_id}") is None
        assert await store.removal_entry(run_id) is None
        assert not await store.is_listed(run_id)
    assert await snapshot(store, live) == live_before
    assert await store.remove_runs([]) == [] and await store.runs_bytes([]) == []


async def test_a_retention_entry_whose_run_is_gone_is_dropped(
    store: EventStore, store_client: aioredis.Redis | None
) -> None:
    """A run deleted by hand leaves its retention entry due forever unless removal drops it
    (remove_run and remove_runs alike answer NOT_FOUND and drop it)."""
    one, two = new_run_id(), new_run_id()
    for run_id in (one, two):
        await append_ok(store, run_id, [run_created(), ev(E.RUN_STARTED)])
        await append_ok(store, run_id, [ev(E.RUN_COMPLETED, data={"result": 1})])
        if store_client is None:
            assert isinstance(store, MemoryEventStore)
            del store._streams[run_id], store._status[run_id]
        else:
            await store_client.delete(store.names.stream(run_id), store.names.status(run_id))
        assert await store.removal_entry(run_id) is not None
    assert await store.remove_run(one) is RemoveOutcome.NOT_FOUND
    assert await store.remove_runs([two]) == [RemoveOutcome.NOT_FOUND]
    assert await store.removal_entry(one) is None and await store.removal_entry(two) is None


async def test_remove_run_refuses_a_live_run(store: EventStore, run_id: str) -> None:
    await started_step(store, run_id)
    before = await snapshot(store, run_id)
    assert await store.remove_run(run_id) is RemoveOutcome.LIVE
    assert await snapshot(store, run_id) == before
    assert await store.is_active(run_id) and await store.is_listed(run_id)
    created = new_run_id()
    await append_ok(store, created, [run_created()])
    assert await store.remove_run(created) is RemoveOutcome.LIVE


async def test_remove_run_of_an_unknown_run_is_not_found(store: EventStore, run_id: str) -> None:
    assert await store.remove_run(run_id) is RemoveOutcome.NOT_FOUND
    assert await store.remove_run(run_id, expected_last="1-0") is RemoveOutcome.NOT_FOUND


async def test_remove_run_with_expected_last_refuses_a_run_that_moved(
    store: EventStore, run_id: str
) -> None:
    ids = await append_ok(store, run_id, [run_created(), ev(E.RUN_STARTED)])
    (last,) = await append_ok(store, run_id, [ev(E.RUN_COMPLETED, data={"result": 1})])
    before = await snapshot(store, run_id)
    assert await store.remove_run(run_id, expected_last=ids[-1]) is RemoveOutcome.MOVED
    assert await snapshot(store, run_id) == before
    assert await store.remove_run(run_id, expected_last=last) is RemoveOutcome.REMOVED
    assert await snapshot(store, run_id) == ([], {})


@pytest.mark.integration
async def test_remove_run_deletes_the_runs_blobs(
    redis_client: aioredis.Redis, names: Names, run_id: str
) -> None:
    """Offloaded payloads (a key per blob, listed in the run's blob set) go with their run."""
    store = RedisEventStore(redis_client, names)
    other = new_run_id()
    for run in (run_id, other):
        await append_ok(store, run, [run_created(), ev(E.RUN_CANCELLED, data={"reason": "x"})])
        for digest in ("d1", "d2"):
            await redis_client.set(names.blob(run, digest), b"x" * 100)
            await redis_client.sadd(names.blob_set(run), digest)
    assert await store.remove_run(run_id) is RemoveOutcome.REMOVED
    assert await redis_client.exists(names.blob(run_id, "d1"), names.blob(run_id, "d2")) == 0
    assert await redis_client.exists(names.blob_set(run_id)) == 0
    assert await redis_client.exists(names.blob(other, "d1"), names.blob_set(other)) == 2
    # Nothing of the removed run is left under its hash tag.
    left = [k async for k in redis_client.scan_iter(match=f"*{{{run_id}}}*")]
    assert left == []
    await store.close()


async def test_a_run_with_its_own_retention_goes_to_the_expire_index(
    store: EventStore, run_id: str
) -> None:
    """run_created's retention is kept in the hash (ret); the finish enters the expire index."""
    data = {"workflow": WF, "args": [], "kwargs": {}, "retention_ms": 60_000}
    created = NewEvent.of(E.RUN_CREATED, data=data, workflow=WF, retention_ms=60_000)
    await append_ok(store, run_id, [created, ev(E.RUN_STARTED)])
    assert (await store.status(run_id))["ret"] == "60000"
    assert (await store.read(run_id))[0].record.retention_ms == 60_000  # type: ignore[union-attr]
    await append_ok(store, run_id, [ev(E.RUN_FAILED, data={"error": {"type": "E"}})])
    ended = (await store.read(run_id))[-1].ts
    assert (await store.status(run_id))["end"] == str(ended)
    assert await store.removal_entry(run_id) == (RemovalIndex.EXPIRE, ended + 60_000)
    shard = shard_of(run_id, store.names.shards)
    assert await store.due_removals(RemovalIndex.EXPIRE, shard, ended + 59_999, 10) == []
    assert await store.due_removals(RemovalIndex.EXPIRE, shard, ended + 60_000, 10) == [run_id]
    assert await store.due_removals(RemovalIndex.FINISHED, shard, 2**50, 10) == []
    assert await store.count_due_removals(ended + 60_000, None) == 1
    assert await verify_run(store, run_id) == []
    assert await store.remove_run(run_id) is RemoveOutcome.REMOVED
    assert await store.count_due_removals(ended + 60_000, 1) == 0


@pytest.mark.parametrize("retention", [0, 999, 10**16])
async def test_a_retention_out_of_bounds_is_refused(
    store: EventStore, run_id: str, retention: int
) -> None:
    created = NewEvent.of(E.RUN_CREATED, data={"workflow": WF}, workflow=WF, retention_ms=retention)
    with pytest.raises(AppendArgumentError, match="retention"):
        await store.append(run_id, [created])
    assert await snapshot(store, run_id) == ([], {})


async def test_repair_rebuilds_a_lost_retention_entry(store: EventStore, run_id: str) -> None:
    """Both retention indexes are derived: verify reports a lost entry and repair restores it."""
    await started_run(store, run_id)
    await append_ok(store, run_id, [ev(E.RUN_COMPLETED, data={"result": 1})])
    entry = await store.removal_entry(run_id)
    assert entry is not None
    events = await store.read(run_id)
    expected = expected_state(run_id, events)
    assert expected.retention == entry
    # Lose the entry (as a run finished before retention existed never had one).
    lost = dataclasses.replace(expected, retention=None)
    assert await store.rewrite_derived(run_id, lost, events[-1].id)
    assert await store.removal_entry(run_id) is None
    assert any("retention index" in p for p in await verify_run(store, run_id))
    assert await repair_run(store, run_id)
    assert await store.removal_entry(run_id) == entry
    assert await verify_run(store, run_id) == []


async def test_event_count_is_the_logs_length_from_the_status_hash(store: EventStore) -> None:
    run = new_run_id()
    assert await store.event_count(run) == 0
    await append_ok(store, run, [run_created(WF)])
    await append_ok(store, run, [ev(E.RUN_STARTED), ev(E.RUN_COMPLETED, data={"result": 1})])
    assert await store.event_count(run) == len(await store.read(run)) == 3


async def test_removing_a_run_removes_its_offloaded_values(store: EventStore) -> None:
    run_id = new_run_id()
    await started_step(store, run_id)
    event = big_result("s1")
    (blob,) = event.blobs
    await append_ok(store, run_id, [event, ev(E.RUN_COMPLETED, data={"result": 1})])
    assert await store.blob_store.blob_digests(run_id) == {blob.ref.digest}
    assert await store.remove_run(run_id) is RemoveOutcome.REMOVED
    assert await store.blob_store.blob_digests(run_id) == set()
    assert await store.blob_store.blob_size(run_id, blob.ref.digest) is None
    with pytest.raises(BlobError, match="holds no blob"):
        await store.blob_store.get_blob(run_id, blob.ref)


# --- output streams (eventlog.outputs) -----------------------------------------------------


async def put(
    store: EventStore,
    run_id: str,
    name: str,
    data: bytes | None,
    *,
    step: str = "s1",
    attempt: int = 1,
    sequence: int | None = None,
    restarted: bool = False,
) -> int:
    """One write; its write number is one past the stream's entries unless given."""
    if sequence is None:
        sequence = len(await store.read_output(run_id, name, 0)) + 1
    return await store.write_output(
        run_id,
        name,
        step=step,
        attempt=attempt,
        restarted=restarted,
        data=data,
        sequence=sequence,
    )


async def test_chunks_are_kept_in_order_at_positions_and_read_from_any_of_them(
    store: EventStore, run_id: str
) -> None:
    await started_run(store, run_id)
    assert await store.output_names(run_id) == []
    assert [await put(store, run_id, "tokens", f"t{i}".encode()) for i in range(5)] == [
        0,
        1,
        2,
        3,
        4,
    ]
    await put(store, run_id, "progress", b"p")
    entries = await store.read_output(run_id, "tokens", 0)
    assert [(e.index, e.kind, e.data, e.step, e.attempt) for e in entries] == [
        (i, EntryKind.CHUNK, f"t{i}".encode(), "s1", 1) for i in range(5)
    ]
    assert [e.index for e in await store.read_output(run_id, "tokens", 3)] == [3, 4]
    assert [e.index for e in await store.read_output(run_id, "tokens", 1, count=2)] == [1, 2]
    assert await store.read_output(run_id, "tokens", 5) == []
    assert await store.read_output(run_id, "nothing", 0) == []
    assert await store.output_names(run_id) == ["progress", "tokens"]


async def test_a_repeated_write_is_found_not_written_twice(store: EventStore, run_id: str) -> None:
    """A write retried after its reply was lost carries the same write number."""
    await started_run(store, run_id)
    assert await put(store, run_id, "tokens", b"a", sequence=1) == 0
    assert await put(store, run_id, "tokens", b"a", sequence=1) == 0
    assert await put(store, run_id, "tokens", b"b", sequence=2) == 1
    assert await put(store, run_id, "tokens", b"b", sequence=2) == 1
    # Another step's first write is not a repeat of this one's.
    assert await put(store, run_id, "tokens", b"c", step="s2", sequence=1) == 2
    assert [e.data for e in await store.read_output(run_id, "tokens", 0)] == [b"a", b"b", b"c"]


async def test_an_ended_stream_takes_only_a_retry_of_the_step_that_ended_it(
    store: EventStore, run_id: str
) -> None:
    await started_run(store, run_id)
    await put(store, run_id, "tokens", b"a")
    assert await put(store, run_id, "tokens", None) == 1  # the end mark
    for step, attempt in (("s2", 1), ("s2", 2), ("s1", 1)):
        with pytest.raises(StreamClosedError, match="closed by its writer"):
            await put(store, run_id, "tokens", b"late", step=step, attempt=attempt, sequence=9)
    index = await put(store, run_id, "tokens", b"again", attempt=2, sequence=1, restarted=True)
    assert index == 2
    (entry,) = await store.read_output(run_id, "tokens", 2)
    assert (entry.attempt, entry.restarted, entry.data) == (2, True, b"again")
    assert (await store.read_output(run_id, "tokens", 1))[0].kind is EntryKind.END


async def test_writes_to_a_missing_or_ended_run_are_refused_and_leave_nothing(
    store: EventStore,
) -> None:
    missing, ended = new_run_id(), new_run_id()
    with pytest.raises(RunNotFoundError):
        await put(store, missing, "tokens", b"x")
    await started_run(store, ended)
    await append_ok(store, ended, [ev(E.RUN_COMPLETED, data={"result": 1})])
    with pytest.raises(RunClosedError):
        await put(store, ended, "tokens", b"x")
    assert await store.output_names(missing) == []
    assert await store.output_names(ended) == []


async def test_stream_limits_refuse_and_trim_nothing(
    store: EventStore, run_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for module in (memory_outputs, redis_outputs):
        monkeypatch.setattr(module, "MAX_STREAMS_PER_RUN", 2)
        monkeypatch.setattr(module, "MAX_STREAM_ENTRIES", 3)
        monkeypatch.setattr(module, "MAX_STREAM_BYTES", 200)
    await started_run(store, run_id)
    await put(store, run_id, "a", b"1")
    await put(store, run_id, "b", b"1")
    with pytest.raises(PayloadTooLargeError, match="one too many"):
        await put(store, run_id, "c", b"1")
    await put(store, run_id, "a", b"2")
    await put(store, run_id, "a", b"3")
    with pytest.raises(PayloadTooLargeError, match="is full"):
        await put(store, run_id, "a", b"4")
    with pytest.raises(PayloadTooLargeError, match="is full"):
        await put(store, run_id, "b", b"x" * 200)
    assert [e.data for e in await store.read_output(run_id, "a", 0)] == [b"1", b"2", b"3"]
    assert await put(store, run_id, "a", None) == 3  # a full stream can still be closed
    assert await store.output_names(run_id) == ["a", "b"]


async def test_a_waiting_reader_is_woken_by_the_first_write(store: EventStore, run_id: str) -> None:
    await started_run(store, run_id)
    for start in (0, 1):
        waiter = asyncio.create_task(store.wait_output(run_id, "tokens", start, 10.0))
        await asyncio.sleep(0.1)
        assert not waiter.done()
        began = time.monotonic()
        await put(store, run_id, "tokens", f"t{start}".encode())
        entries = await asyncio.wait_for(waiter, 5.0)
        assert [e.index for e in entries] == [start]
        assert time.monotonic() - began < 2.0
    assert await store.wait_output(run_id, "tokens", 2, 0.2) == []


@pytest.mark.parametrize(
    ("call", "error"),
    [
        ({"name": "a b"}, InvalidArgumentError),
        ({"name": ""}, InvalidArgumentError),
        ({"name": "x" * 65}, InvalidArgumentError),
        ({"name": "a:b"}, InvalidArgumentError),
        ({"step": "s 1"}, InvalidArgumentError),
        ({"attempt": 0}, InvalidArgumentError),
        ({"sequence": 0}, InvalidArgumentError),
        ({"run_id": "bad|id"}, InvalidArgumentError),
    ],
)
async def test_malformed_writes_are_refused_before_anything_is_written(
    store: EventStore, run_id: str, call: dict[str, Any], error: type[Exception]
) -> None:
    await started_run(store, run_id)
    args: dict[str, Any] = {"run_id": run_id, "name": "tokens", "step": "s1", "attempt": 1}
    args |= {"sequence": 1} | call
    with pytest.raises(error):
        await store.write_output(
            args.pop("run_id"), args.pop("name"), restarted=False, data=b"x", **args
        )
    assert await store.output_names(run_id) == []
    with pytest.raises(InvalidArgumentError):
        await store.read_output(run_id, "a b", 0)


@pytest.mark.parametrize(
    ("entry_id", "fields", "match"),
    [
        ("1-1", {b"k": b"c", b"s": b"s1", b"a": b"1", b"r": b"0", b"v": b""}, "not a position"),
        ("0-0", {b"k": b"c", b"s": b"s1", b"a": b"1", b"r": b"0", b"v": b""}, "not a position"),
        ("0-1", {b"k": b"z", b"s": b"s1", b"a": b"1", b"r": b"0", b"v": b""}, "malformed"),
        ("0-1", {b"k": b"c", b"s": b"s 1", b"a": b"1", b"r": b"0", b"v": b""}, "no valid step"),
        ("0-1", {b"k": b"c", b"s": b"s1", b"a": b"-4", b"r": b"0", b"v": b""}, "no valid step"),
        ("0-1", {b"k": b"c", b"s": b"s1", b"a": b"x", b"r": b"0", b"v": b""}, "malformed"),
        ("0-1", {b"k": b"c", b"s": b"s1", b"a": b"1", b"r": b"0"}, "no field 'v'"),
        ("0-1", {b"k": b"c", b"s": b"s1", b"a": b"1", b"r": b"0", b"v": b"x" * 70_000}, "over"),
        ("0-1", {b"k": b"c", b"s": b"\xff", b"a": b"1", b"r": b"0", b"v": b""}, "malformed"),
    ],
)
def test_a_stored_entry_is_checked_before_it_is_used(
    entry_id: str, fields: dict[bytes, bytes], match: str
) -> None:
    with pytest.raises(SerializationError, match=match):
        parse_entry(entry_id, fields)


def test_a_well_formed_entry_is_read_back() -> None:
    fields = {b"k": b"e", b"s": b"s2", b"a": b"3", b"r": b"1", b"n": b"4", b"v": b""}
    assert parse_entry("0-7", fields) == OutputEntry(6, EntryKind.END, "s2", 3, True, b"")


# --- concurrency slots (eventlog.slots) --------------------------------------------------


async def test_slots_admit_up_to_capacity_then_park_in_order_and_promote_on_release(
    store: EventStore,
) -> None:
    lim, key = f"lim-{uuid.uuid4().hex[:6]}", "tenant-1"
    assert await store.acquire_slot(lim, key, "r|s1", 2, 60_000, b"m1") == (True, [])
    assert await store.acquire_slot(lim, key, "r|s2", 2, 60_000, b"m2") == (True, [])
    for n in (3, 4, 5):
        assert await store.acquire_slot(lim, key, f"r|s{n}", 2, 60_000, f"m{n}".encode()) == (
            False,
            [],
        )
    # A holder asking again still holds (a redelivery); a waiter asking again keeps its place.
    assert await store.acquire_slot(lim, key, "r|s1", 2, 60_000, b"m1") == (True, [])
    assert await store.acquire_slot(lim, key, "r|s4", 2, 60_000, b"m4-again") == (False, [])
    # Another key of the same limit is not held up.
    assert await store.acquire_slot(lim, "tenant-2", "r|s9", 2, 60_000, b"m9") == (True, [])
    uses = {(u.key, u.holding, u.waiting) for u in await store.slot_uses() if u.limit == lim}
    assert uses == {("tenant-1", 2, 3), ("tenant-2", 1, 0)}
    assert await store.release_slot(lim, key, "r|s1", 2, 60_000) == [b"m3"]
    assert await store.release_slot(lim, key, "r|s1", 2, 60_000) == []  # twice: harmless
    # The promoted waiter asking (its message delivered) finds its slot held for it.
    assert await store.acquire_slot(lim, key, "r|s3", 2, 60_000, b"m3") == (True, [])
    assert await store.release_slot(lim, key, "r|s2", 2, 60_000) == [b"m4-again"]
    assert await store.release_slot(lim, key, "r|s3", 2, 60_000) == [b"m5"]
    for member in ("r|s4", "r|s5", "r|s9"):
        await store.release_slot(lim, "tenant-2" if member == "r|s9" else key, member, 2, 60_000)
    assert not [u for u in await store.slot_uses() if u.limit == lim]


async def test_an_expired_holder_frees_its_slot_for_the_sweep_and_renewal_keeps_it(
    store: EventStore,
) -> None:
    lim, key = f"lim-{uuid.uuid4().hex[:6]}", ""
    assert (await store.acquire_slot(lim, key, "a|s1", 1, 300, b"ma"))[0]
    assert (await store.acquire_slot(lim, key, "b|s1", 1, 300, b"mb")) == (False, [])
    await store.renew_slots([(lim, key, "a|s1")], 60_000)
    await asyncio.sleep(0.5)
    assert await store.promote_waiting(60_000) == []  # renewed: still held
    # A holder that stops renewing (its worker died) loses the slot to the waiter.
    assert (await store.acquire_slot(lim, "k2", "c|s1", 1, 200, b"mc"))[0]
    assert (await store.acquire_slot(lim, "k2", "d|s1", 1, 200, b"md")) == (False, [])
    await asyncio.sleep(0.4)
    assert await store.promote_waiting(60_000) == [b"md"]
    assert await store.promote_waiting(60_000) == []


async def test_slot_keys_are_bounded_and_promotion_is_paced(
    store: EventStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(InvalidArgumentError, match="over 256 characters"):
        await store.acquire_slot("lim", "k" * 257, "r|s1", 1, 60_000, b"m")
    lim = f"lim-{uuid.uuid4().hex[:6]}"
    assert (await store.acquire_slot(lim, "k", "r|s0", 1, 60_000, b"m0"))[0]
    for i in range(1, 120):
        await store.acquire_slot(lim, "k", f"r|s{i}", 1, 60_000, f"m{i}".encode())
    # Capacity grows (a deploy raised the limit): one call lets at most 100 in.
    promoted = await store.release_slot(lim, "k", "r|s0", 500, 60_000)
    assert len(promoted) == 100 and promoted[0] == b"m1"
    assert len(await store.release_slot(lim, "k", "none", 500, 60_000)) == 19


# --- rate limits (eventlog.rates) --------------------------------------------------------


async def test_a_rate_limit_spaces_starts_and_keeps_each_waiters_turn(store: EventStore) -> None:
    lim = f"rate-{uuid.uuid4().hex[:6]}"
    assert await store.take_rate(lim, "k", "a", 200.0, 1) == 0
    waits = [await store.take_rate(lim, "k", m, 200.0, 1) for m in ("b", "c", "d")]
    # Turns in arrival order, one interval apart (allowing for the ms the calls took).
    assert [round(w / 200) for w in waits] == [1, 2, 3], waits
    # Asking again before its turn: the same turn, not a new one at the back.
    again = await store.take_rate(lim, "k", "c", 200.0, 1)
    assert abs(again - waits[1]) <= 50
    # Another key of the same limit has its own budget.
    assert await store.take_rate(lim, "other", "x", 200.0, 1) == 0
    await asyncio.sleep(waits[0] / 1000 + 0.05)
    assert await store.take_rate(lim, "k", "b", 200.0, 1) == 0  # b's turn has come


async def test_a_burst_may_start_at_once_then_the_rate_applies(store: EventStore) -> None:
    lim = f"rate-{uuid.uuid4().hex[:6]}"
    firsts = [await store.take_rate(lim, "", f"m{i}", 1000.0, 3) for i in range(3)]
    assert firsts == [0, 0, 0]
    assert await store.take_rate(lim, "", "m3", 1000.0, 3) > 500
    with pytest.raises(InvalidArgumentError):
        await store.take_rate(lim, "k" * 300, "m", 1000.0, 1)
