"""Steps that fail, hang or stall: retries, backoff, timeouts and heartbeats (issue 3)."""

from __future__ import annotations

from typing import Any

import pytest
from ledgerflow.eventlog.events import Event, EventType

import ledgerflow as lf
from tests.apps import flaky

pytestmark = pytest.mark.integration


def of(events: list[Event], kind: EventType) -> list[Event]:
    return [e for e in events if e.type is kind]


@pytest.fixture
def label(namespace: str) -> str:
    return f"{namespace}:test:attempts"


async def test_fails_twice_then_succeeds_with_growing_backoff(
    running: lf.Client, label: str
) -> None:
    run = await running.start(flaky.one, "fails_twice", label)
    assert await run.result(timeout=30) == "ok on attempt 3"
    events = await running.events(run.run_id)
    retrying = of(events, EventType.STEP_RETRYING)
    assert [e.data["attempt"] for e in retrying] == [1, 2]
    assert [e.data["delay_ms"] for e in retrying] == [100, 200]  # initial 0.1 s, backoff 2
    assert all(e.data["error"]["type"] == "ConnectionError" for e in retrying)
    assert "flaky API on attempt 1" in retrying[0].data["error"]["message"]
    assert "in fails_twice" in retrying[0].data["error"]["traceback"]
    started = of(events, EventType.STEP_STARTED)
    assert [e.data["attempt"] for e in started] == [1, 2, 3]
    # The delay was honoured: each new attempt started no earlier than its due time.
    for retry, nxt in zip(retrying, started[1:], strict=True):
        assert nxt.ts - retry.ts >= retry.data["delay_ms"]
    assert len(of(events, EventType.STEP_COMPLETED)) == 1
    state = await running.state(run.run_id)
    assert state.steps["s1"].attempt == 3


async def test_retryable_error_sets_the_delay_exactly(running: lf.Client, label: str) -> None:
    run = await running.start(flaky.one, "rate_limited", label, 0.6)
    assert await run.result(timeout=30) == "served"
    events = await running.events(run.run_id)
    (retry,) = of(events, EventType.STEP_RETRYING)
    assert retry.data["delay_ms"] == 600
    second = of(events, EventType.STEP_STARTED)[1]
    assert 600 <= second.ts - retry.ts < 600 + 1500


async def test_fatal_error_is_never_retried(running: lf.Client, label: str) -> None:
    run = await running.start(flaky.one, "fatal", label)
    with pytest.raises(lf.WorkflowFailedError, match="card stolen"):
        await run.result(timeout=30)
    events = await running.events(run.run_id)
    assert of(events, EventType.STEP_RETRYING) == []
    assert len(of(events, EventType.STEP_STARTED)) == 1
    (failed,) = of(events, EventType.STEP_FAILED)
    assert failed.data["error"]["type"] == "ledgerflow.FatalError"


async def test_non_retryable_types_fail_at_once(running: lf.Client, label: str) -> None:
    run = await running.start(flaky.one, "bad_input", label)
    with pytest.raises(lf.WorkflowFailedError, match="not a number"):
        await run.result(timeout=30)
    events = await running.events(run.run_id)
    assert of(events, EventType.STEP_RETRYING) == []


async def test_exhausted_attempts_reach_the_workflow_as_step_failed(
    running: lf.Client, label: str
) -> None:
    run = await running.start(flaky.catching, label)
    assert await run.result(timeout=30) == "gave up after 3: RuntimeError: still broken"
    events = await running.events(run.run_id)
    assert len(of(events, EventType.STEP_RETRYING)) == 2
    (failed,) = of(events, EventType.STEP_FAILED)
    assert failed.data["attempt"] == 3


async def test_hanging_step_times_out_and_is_retried(running: lf.Client, label: str) -> None:
    run = await running.start(flaky.one, "hangs_once", label)
    assert await run.result(timeout=30) == "finished"
    events = await running.events(run.run_id)
    (retry,) = of(events, EventType.STEP_RETRYING)
    assert retry.data["error"]["type"] == "ledgerflow.StepTimeoutError"
    assert "exceeded its 0.5 s timeout" in retry.data["error"]["message"]
    first_start = of(events, EventType.STEP_STARTED)[0]
    assert 450 <= retry.ts - first_start.ts < 3000


async def test_heartbeating_step_outlives_its_heartbeat_timeout(
    running: lf.Client, label: str
) -> None:
    run = await running.start(flaky.one, "heartbeats", label, 1.5)
    assert await run.result(timeout=30) == "alive"
    events = await running.events(run.run_id)
    assert of(events, EventType.STEP_RETRYING) == []


async def test_step_that_stops_heartbeating_is_failed_and_retried(
    running: lf.Client, label: str
) -> None:
    run = await running.start(flaky.one, "stalls_once", label)
    assert await run.result(timeout=30) == "recovered"
    events = await running.events(run.run_id)
    (retry,) = of(events, EventType.STEP_RETRYING)
    assert retry.data["error"]["type"] == "ledgerflow.HeartbeatTimeoutError"


async def test_idempotency_key_is_stable_across_attempts(running: lf.Client, label: str) -> None:
    run = await running.start(flaky.keyed_workflow, label)
    keys = await run.result(timeout=30)
    assert len(keys) == 3
    assert len(set(keys)) == 1
    assert keys[0] == f"{run.run_id}:s1"


async def test_payload_over_the_limit_fails_at_the_call_site(
    backends: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # With offloading off every value is inline and held to the inline limit, as before.
    # (With it on, large values go out of line: tests/integration/test_large_values.py.)
    monkeypatch.setenv("LEDGERFLOW_OFFLOAD_THRESHOLD", "0")
    client = lf.Client(backends.store, backends.broker)
    with pytest.raises(lf.PayloadTooLargeError, match="over the 1048576-byte payload limit"):
        await client.start(flaky.one, "slow", "x" * (1024 * 1024 + 10), run_id="too-big")
    assert await backends.store.read("too-big") == []
