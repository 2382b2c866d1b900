"""The vertical slice on real RabbitMQ and Redis, worker and scheduler in this process."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import pytest
from ledgerflow.broker import REASON_HEADER, StepMessage, encode_message
from ledgerflow.eventlog.events import EventType

import ledgerflow as lf
from tests.apps import arith

pytestmark = pytest.mark.integration


async def test_issue_example_runs_end_to_end(running: lf.Client) -> None:
    run = await running.start(arith.total, 10)
    assert await run.result(timeout=30) == arith.expected_total(10)
    events = await running.events(run.run_id)
    kinds = Counter(e.type for e in events)
    assert kinds[EventType.STEP_CREATED] == 20
    assert kinds[EventType.STEP_STARTED] == 20
    assert kinds[EventType.STEP_COMPLETED] == 20
    assert [e.type for e in events[:2]] == [EventType.RUN_CREATED, EventType.RUN_STARTED]
    assert events[-1].type is EventType.RUN_COMPLETED
    # The fan-out's ten step_created are one batch: consecutive, before any step starts.
    created = [i for i, e in enumerate(events) if e.type is EventType.STEP_CREATED][:10]
    assert created == list(range(2, 12))
    assert [events[i].corr for i in created] == [f"s{k}" for k in range(1, 11)]
    assert all(isinstance(e.ts, int) and e.id for e in events)


async def test_state_is_rebuilt_from_the_log(running: lf.Client) -> None:
    run = await running.start(arith.total, 3)
    await run.result(timeout=30)
    state = await running.state(run.run_id)
    assert state.status == "completed"
    assert state.workflow == "it_total"
    assert state.args == [3]
    assert state.result == arith.expected_total(3)
    assert len(state.steps) == 6
    assert {s.status for s in state.steps.values()} == {"completed"}
    assert state.steps["s1"].name == "it_add"


async def test_start_with_run_id_is_idempotent(running: lf.Client, backends: Any) -> None:
    first = await running.start(arith.total, 4, run_id="order-123")
    second = await running.start(arith.total, 4, run_id="order-123")
    assert first.run_id == second.run_id == "order-123"
    assert await second.result(timeout=30) == arith.expected_total(4)
    events = await running.events("order-123")
    assert sum(e.type is EventType.RUN_CREATED for e in events) == 1
    assert sum(e.type is EventType.RUN_COMPLETED for e in events) == 1
    with pytest.raises(lf.LedgerflowError, match="already exists for workflow 'it_total'"):
        await running.start(arith.failing, "x", run_id="order-123")


async def test_failed_step_fails_the_run_with_type_message_traceback(running: lf.Client) -> None:
    run = await running.start(arith.failing, "card declined")
    with pytest.raises(lf.WorkflowFailedError) as info:
        await run.result(timeout=30)
    assert "StepFailedError" in info.value.type_name
    assert "card declined" in info.value.message
    assert "RuntimeError" in info.value.message
    state = await running.state(run.run_id)
    assert state.status == "failed"
    assert state.steps["s1"].status == "failed"
    assert state.steps["s1"].error is not None
    assert state.steps["s1"].error.type == "RuntimeError"
    assert "in boom" in state.steps["s1"].error.traceback


async def test_workflow_can_catch_a_failed_step(running: lf.Client) -> None:
    run = await running.start(arith.recovering, "timeout")
    assert await run.result(timeout=30) == "recovered from RuntimeError: timeout"


async def test_result_times_out_with_a_clear_error(backends: Any) -> None:
    client = lf.Client(backends.store, backends.broker)  # no worker, no scheduler
    run = await client.start(arith.total, 2)
    with pytest.raises(lf.ResultTimeoutError, match=run.run_id):
        await run.result(timeout=0.3)


async def test_result_of_unknown_run(running: lf.Client) -> None:
    with pytest.raises(lf.RunNotFoundError):
        await running.result("no-such-run", timeout=1)


async def test_unserializable_argument_fails_at_the_call_site(
    running: lf.Client, backends: Any
) -> None:
    with pytest.raises(lf.SerializationError, match=r"argument 'n' of workflow 'it_total'.*object"):
        await running.start(arith.total, object(), run_id="never-written")
    assert await backends.store.read("never-written") == []


async def test_unknown_workflow_is_dead_lettered_and_the_run_kept(
    running: lf.Client, backends: Any
) -> None:
    run = await running.start("no_such_workflow", 1)
    dead = await backends.broker.get(backends.names.dead_queue, timeout=10)
    assert dead is not None
    assert "no_such_workflow" in dead.headers[REASON_HEADER]
    await dead.ack()
    state = await running.state(run.run_id)
    assert state.status == "created"  # nothing lost: redeploy and redrive to continue


async def test_garbage_on_the_steps_queue_is_dead_lettered_and_work_goes_on(
    running: lf.Client, backends: Any
) -> None:
    steps_queue = backends.names.step_queue()
    await backends.broker.publish(steps_queue, b"\xc1\x00 not msgpack")
    dead = await backends.broker.get(backends.names.dead_queue, timeout=10)
    assert dead is not None
    assert dead.body == b"\xc1\x00 not msgpack"
    assert "malformed message" in dead.headers[REASON_HEADER]
    await dead.ack()
    run = await running.start(arith.total, 3)
    assert await run.result(timeout=30) == arith.expected_total(3)


async def test_unknown_step_is_dead_lettered_with_its_name(
    running: lf.Client, backends: Any
) -> None:
    message = StepMessage(
        run_id="r1", step_id="s1", step_name="not_a_step", attempt=1, args=b"", queue="default"
    )
    await backends.broker.publish(backends.names.step_queue(), encode_message(message))
    dead = await backends.broker.get(backends.names.dead_queue, timeout=10)
    assert dead is not None
    assert "not_a_step" in dead.headers[REASON_HEADER]
    await dead.ack()


async def test_many_runs_in_parallel(running: lf.Client) -> None:
    runs = await asyncio.gather(*(running.start(arith.fan_chain, 3, 3) for _ in range(20)))
    results = await asyncio.gather(*(r.result(timeout=60) for r in runs))
    assert results == [arith.expected_fan_chain(3, 3)] * 20
