"""Oversized error text is recorded bounded, once per event, still readable (issue 11, item 5)."""

from __future__ import annotations

from typing import Any

import pytest
import redis.asyncio as aioredis
from ledgerflow.eventlog.events import EventType
from ledgerflow.eventlog.text import MAX_MESSAGE
from ledgerflow.worker.outcome import MAX_TRACEBACK

import ledgerflow as lf
from tests.apps import flaky, waiting

pytestmark = pytest.mark.integration

HUGE = 8 * 1024 * 1024
STREAM_BUDGET = 50_000


async def stream_bytes(redis_client: aioredis.Redis, backends: Any, run_id: str) -> int:
    """What the run's stream holds, field bytes as XRANGE returns them."""
    key = backends.names.stream(run_id)
    entries = await redis_client.xrange(key)
    return sum(len(k) + len(v) for _, fields in entries for k, v in fields.items())


def assert_bounded(error: dict[str, str]) -> None:
    assert len(error["message"]) <= MAX_MESSAGE
    assert len(error["traceback"]) <= MAX_TRACEBACK
    assert error["message"].startswith(("START", "step ")) and "END" in error["message"]
    assert "characters cut" in error["message"]


async def test_a_step_raising_an_8_mb_message_is_recorded_bounded(
    running: lf.Client, backends: Any, redis_client: aioredis.Redis, namespace: str
) -> None:
    run = await running.start(flaky.one, "shouts", f"{namespace}:test:shouts", HUGE)
    with pytest.raises(lf.WorkflowFailedError) as failure:
        await run.result(timeout=60)
    # Still readable by whoever waits for the run: type, start and end of the text.
    assert failure.value.type_name == "ledgerflow.StepFailedError"
    assert "failed after 4 attempt(s): ValueError: START" in failure.value.message
    assert "END" in failure.value.message
    events = await running.events(run.run_id)
    recorded = [e for e in events if e.type in (EventType.STEP_RETRYING, EventType.STEP_FAILED)]
    assert [e.data["attempt"] for e in recorded] == [1, 2, 3, 4]  # the run behaves as before
    for event in recorded:
        assert event.data["error"]["type"] == "ValueError"
        assert_bounded(event.data["error"])
        assert "in shouts" in event.data["error"]["traceback"]
    (run_failed,) = [e for e in events if e.type is EventType.RUN_FAILED]
    assert_bounded(run_failed.data["error"])
    size = await stream_bytes(redis_client, backends, run.run_id)
    assert size < STREAM_BUDGET, f"the stream holds {size} bytes"
    memory = await redis_client.memory_usage(backends.names.stream(run.run_id))
    assert memory is not None and memory < 2 * STREAM_BUDGET


async def test_a_step_failed_error_seen_by_the_workflow_is_bounded_and_readable(
    running: lf.Client, namespace: str
) -> None:
    run = await running.start(flaky.one, "shouts", f"{namespace}:test:shouts", HUGE)
    with pytest.raises(lf.WorkflowFailedError):
        await run.result(timeout=60)
    state = await running.state(run.run_id)
    step_error = state.steps["s1"].error
    assert step_error is not None and step_error.message.startswith("START")
    assert step_error.message.endswith("END")
    assert f"{HUGE} characters" in step_error.message


async def test_a_workflow_raising_an_8_mb_message_is_recorded_bounded(
    running: lf.Client, backends: Any, redis_client: aioredis.Redis
) -> None:
    run = await running.start(flaky.shouting, HUGE)
    with pytest.raises(lf.WorkflowFailedError) as failure:
        await run.result(timeout=60)
    assert failure.value.type_name == "RuntimeError"
    assert failure.value.message.startswith("START")
    assert failure.value.message.endswith("END")
    assert len(failure.value.message) <= MAX_MESSAGE
    assert "in shouting" in failure.value.traceback_text
    assert len(failure.value.traceback_text) <= MAX_TRACEBACK
    size = await stream_bytes(redis_client, backends, run.run_id)
    assert size < STREAM_BUDGET // 2, f"the stream holds {size} bytes"


async def test_a_long_cancel_reason_is_recorded_bounded(running: lf.Client, namespace: str) -> None:
    run = await running.start(waiting.approval, namespace)
    await running.cancel(run.run_id, reason="why " * 1_000_000)
    with pytest.raises(lf.RunCancelled) as cancelled:
        await run.result(timeout=30)
    assert len(str(cancelled.value)) < MAX_MESSAGE + 200
    state = await running.state(run.run_id)
    assert state.cancel_reason is not None and state.cancel_reason.startswith("why why")
    assert "characters cut" in state.cancel_reason
