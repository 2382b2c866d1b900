"""Delayed starts, workflow timeouts and lf.sleep_until, embedded (memory store, in-process).

Every check reads the run's log or a recorded value, never the wall clock of the
test: a loaded machine may be slow, never early.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from typing import Any

import pytest
from ledgerflow.eventlog.events import EventType
from ledgerflow.eventlog.fold import fold
from ledgerflow.scheduler.later import start_time_ms

import ledgerflow as lf
from tests.apps import later


async def test_a_delayed_run_starts_its_code_after_a_recorded_wait() -> None:
    async with lf.embedded() as client:
        asked = int(time.time() * 1000)
        run = await client.start(later.stamped, delay=0.8)
        ran_at = await run.result(timeout=20)
        events = await client.events(run.run_id)
    assert ran_at >= asked + 800
    waits = [e for e in events if e.type is EventType.WAIT_CREATED]
    assert len(waits) == 1 and waits[0].corr == "s1"
    assert waits[0].data["purpose"] == "start"  # runs show and the dashboard say so
    assert fold(run.run_id, events).waits["s1"].purpose == "start"
    assert events[0].data["start_at"] >= asked + 800
    # The code's own step comes after the wait, at the next position.
    assert [e.corr for e in events if e.type is EventType.STEP_CREATED] == ["s2"]


async def test_a_start_time_in_the_past_starts_at_once_and_records_no_wait() -> None:
    async with lf.embedded() as client:
        past = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
        run = await client.start(later.stamped, start_at=past)
        await run.result(timeout=20)
        events = await client.events(run.run_id)
    assert not [e for e in events if e.type is EventType.WAIT_CREATED]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"start_at": dt.datetime(2030, 1, 1)}, "timezone-aware"),
        ({"start_at": "2030-01-01"}, "must be a datetime"),
        ({"delay": float("nan")}, "cannot be honoured"),
        ({"delay": 1, "start_at": dt.datetime.now(dt.UTC)}, "not both"),
        ({"start_at": dt.datetime(1960, 1, 1, tzinfo=dt.UTC)}, "out of range"),
    ],
)
def test_bad_start_times_are_refused_before_anything_is_written(
    kwargs: dict[str, Any], match: str
) -> None:
    with pytest.raises(lf.InvalidArgumentError, match=match):
        start_time_ms(kwargs.get("start_at"), kwargs.get("delay"))


async def test_a_bad_start_time_given_to_start_records_nothing() -> None:
    async with lf.embedded() as client:
        with pytest.raises(lf.InvalidArgumentError, match="timezone-aware"):
            await client.start(later.stamped, run_id="never", start_at=dt.datetime(2030, 1, 1))
        assert not await client.exists("never")


async def test_a_run_past_its_timeout_fails_its_child_is_cancelled_its_step_told() -> None:
    later.TOLD.clear()
    async with lf.embedded() as client:
        run = await client.start(later.bounded, 20.0, 60.0)
        with pytest.raises(lf.WorkflowTimeoutError, match="within its timeout of 1 s"):
            await run.result(timeout=30)
        with pytest.raises(lf.WorkflowFailedError):  # still a WorkflowFailedError
            await run.result(timeout=1)
        state = await client.state(run.run_id)
        children = [s.child_run_id for s in state.steps.values() if s.child_run_id]
        assert len(children) == 1
        for _ in range(100):
            if later.TOLD:
                break
            await asyncio.sleep(0.1)
        child_state = await client.state(children[0])
        events = await client.events(run.run_id)
    assert state.status.value == "failed"
    assert state.error is not None and state.error.type == "ledgerflow.WorkflowTimeoutError"
    assert child_state.status.value == "cancelled"
    assert [run.run_id] == later.TOLD
    started = next(e for e in events if e.type is EventType.RUN_STARTED)
    assert started.data == {"timeout_ms": 1000}
    deadline = next(e for e in events if e.type is EventType.WAIT_CREATED)
    assert deadline.data["purpose"] == "deadline"


async def test_a_run_within_its_timeout_completes_and_the_deadline_does_not_fire() -> None:
    async with lf.embedded() as client:
        run = await client.start(later.quick_enough)
        assert await run.result(timeout=20) == "ok"


async def test_sleep_until_wakes_at_the_recorded_time_and_refuses_naive_times() -> None:
    async with lf.embedded() as client:
        target = int(time.time() * 1000) + 600
        run = await client.start(later.wake_at, target)
        woke = await run.result(timeout=20)
        events = await client.events(run.run_id)
    wait = next(e for e in events if e.type is EventType.WAIT_CREATED)
    assert wait.data["due"] == target
    assert woke >= target
