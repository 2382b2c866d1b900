"""Durable sleeps, hooks, timeouts, cancellation and child workflows on real servers (issue 4)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from collections import Counter
from typing import Any

import pytest
from ledgerflow.eventlog.events import Event, EventType
from ledgerflow.scheduler.registry import workflows
from ledgerflow.scheduler.replay import WorkflowInstance

import ledgerflow as lf
from tests.apps import arith, waiting
from tests.integration.test_worker_failures import wait_for_events
from tests.processes import cli, processes
from tests.servers import Servers

pytestmark = pytest.mark.integration

APP = "tests.apps.waiting"


def of(events: list[Event], kind: EventType) -> list[Event]:
    return [e for e in events if e.type is kind]


# --- sleep -------------------------------------------------------------------------------


async def test_sleep_records_its_due_time_and_completes_once(running: lf.Client) -> None:
    run = await running.start(waiting.sleeper, 0.5)
    slept = await run.result(timeout=30)
    assert slept >= 0.5
    events = await running.events(run.run_id)
    (created,) = of(events, EventType.WAIT_CREATED)
    (completed,) = of(events, EventType.WAIT_COMPLETED)
    assert created.data["due"] >= created.ts + 490
    assert completed.ts >= created.data["due"]
    assert completed.ts - created.data["due"] < 1000


async def test_nothing_is_held_in_rabbitmq_while_a_run_sleeps(
    running: lf.Client, backends: Any
) -> None:
    run = await running.start(waiting.sleep_then_step, 3.0)
    await wait_for_events(running, run.run_id, lambda ev: bool(of(ev, EventType.WAIT_CREATED)))
    await asyncio.sleep(0.5)
    names = backends.names
    assert await backends.broker.queue_depth(names.runs_queue) == 0
    assert await backends.broker.queue_depth(names.step_queue()) == 0
    timers = await backends.store.pending_timers(run.run_id)
    assert [t.kind.value for t, _ in timers] == ["wait"]
    assert await run.result(timeout=30) == "marked after sleep"


async def test_a_sleeping_run_survives_killing_every_process(
    servers: Servers, backends: Any
) -> None:
    ns = backends.names.namespace
    client = lf.Client(backends.store, backends.broker)
    commands = [["scheduler", APP], ["worker", APP]]
    with processes(servers, ns, commands) as procs:
        run = await client.start(waiting.sleep_then_step, 2.0)
        await wait_for_events(client, run.run_id, lambda ev: bool(of(ev, EventType.WAIT_CREATED)))
        for proc in procs:
            proc.send_signal(signal.SIGKILL)
        for proc in procs:
            await asyncio.to_thread(proc.wait, 10)
    await asyncio.sleep(2.5)  # the due time passes while nothing runs
    assert of(await client.events(run.run_id), EventType.WAIT_COMPLETED) == []
    with processes(servers, ns, commands):
        assert await run.result(timeout=60) == "marked after sleep"
    events = await client.events(run.run_id)
    assert len(of(events, EventType.WAIT_COMPLETED)) == 1


# --- hooks -------------------------------------------------------------------------------


async def test_hook_resumed_by_a_client(running: lf.Client, namespace: str) -> None:
    order = f"{namespace}-1"
    run = await running.start(waiting.approval, order)
    await wait_for_events(running, run.run_id, lambda ev: bool(of(ev, EventType.HOOK_CREATED)))
    assert await running.resume_hook(f"approve-{order}", {"by": "alice"}) == run.run_id
    assert await run.result(timeout=30) == {"by": "alice"}
    events = await running.events(run.run_id)
    (created,) = of(events, EventType.HOOK_CREATED)
    assert created.data["metadata"] == {"order": order}
    assert len(of(events, EventType.HOOK_DISPOSED)) == 1  # disposed when the run ended
    with pytest.raises(lf.HookNotFoundError, match="no live hook"):
        await running.resume_hook(f"approve-{order}", "again")


async def test_hook_resumed_from_the_cli(
    servers: Servers, running: lf.Client, namespace: str
) -> None:
    order = f"{namespace}-cli"
    run = await running.start(waiting.approval, order)
    await wait_for_events(running, run.run_id, lambda ev: bool(of(ev, EventType.HOOK_CREATED)))
    done = await asyncio.to_thread(
        cli, servers, namespace, "hooks", "resume", f"approve-{order}", "--payload", '{"ok": 1}'
    )
    assert done.returncode == 0, done.stderr
    assert await run.result(timeout=30) == {"ok": 1}
    unknown = await asyncio.to_thread(cli, servers, namespace, "hooks", "resume", "nope")
    assert unknown.returncode == 4
    assert "no live hook has token 'nope'" in unknown.stderr


async def test_repeated_deliveries_with_async_for(running: lf.Client, namespace: str) -> None:
    token = f"{namespace}-stream"
    run = await running.start(waiting.collector, token)
    await wait_for_events(running, run.run_id, lambda ev: bool(of(ev, EventType.HOOK_CREATED)))
    for payload in [1, 2, 3, "stop"]:
        await running.resume_hook(token, payload)
    assert await run.result(timeout=30) == [1, 2, 3]
    assert len(of(await running.events(run.run_id), EventType.HOOK_RECEIVED)) == 4


async def test_hook_tokens_are_unique_among_live_hooks(running: lf.Client, namespace: str) -> None:
    order = f"{namespace}-dup"
    first = await running.start(waiting.approval, order)
    await wait_for_events(running, first.run_id, lambda ev: bool(of(ev, EventType.HOOK_CREATED)))
    second = await running.start(waiting.approval, order)
    with pytest.raises(lf.WorkflowFailedError, match="already used by a live hook") as info:
        await second.result(timeout=30)
    # The workflow itself saw the conflict where it awaited the hook (it could have caught it).
    assert info.value.type_name == "ledgerflow.HookConflictError"
    assert of(await running.events(second.run_id), EventType.HOOK_DISPOSED)
    await running.resume_hook(f"approve-{order}", "ok")
    assert await first.result(timeout=30) == "ok"


async def test_wait_for_times_out_durably(running: lf.Client, namespace: str) -> None:
    run = await running.start(waiting.approval_with_timeout, f"{namespace}-late", 0.5)
    assert await run.result(timeout=30) == "timed out"
    events = await running.events(run.run_id)
    assert len(of(events, EventType.WAIT_COMPLETED)) == 1
    assert of(events, EventType.HOOK_RECEIVED) == []


async def test_wait_for_returns_what_arrives_in_time(running: lf.Client, namespace: str) -> None:
    token = f"{namespace}-early"
    run = await running.start(waiting.approval_with_timeout, token, 30.0)
    await wait_for_events(running, run.run_id, lambda ev: bool(of(ev, EventType.HOOK_CREATED)))
    await running.resume_hook(token, "yes")
    assert await run.result(timeout=30) == "approved: yes"


# --- cancellation ------------------------------------------------------------------------


async def test_cancel_a_sleeping_run(running: lf.Client) -> None:
    run = await running.start(waiting.sleep_then_step, 1.0)
    await wait_for_events(running, run.run_id, lambda ev: bool(of(ev, EventType.WAIT_CREATED)))
    await running.cancel(run.run_id, reason="customer changed their mind")
    with pytest.raises(lf.RunCancelled, match="changed their mind"):
        await run.result(timeout=10)
    await asyncio.sleep(1.5)  # the timer comes due after the run ended: nothing happens
    events = await running.events(run.run_id)
    assert events[-1].type is EventType.RUN_CANCELLED
    assert of(events, EventType.STEP_CREATED) == []
    await running.cancel(run.run_id)  # again: nothing to do
    with pytest.raises(lf.RunClosedError):
        done = await running.start(arith.total, 1)
        await done.result(timeout=30)
        await running.cancel(done.run_id)


async def test_a_running_step_sees_the_cancellation(running: lf.Client) -> None:
    run = await running.start(waiting.long_step, 20.0)
    await wait_for_events(running, run.run_id, lambda ev: bool(of(ev, EventType.STEP_STARTED)))
    await running.cancel(run.run_id)
    with pytest.raises(lf.RunCancelled):
        await run.result(timeout=10)
    await asyncio.sleep(1.5)  # the step noticed, returned, and its outcome was refused
    events = await running.events(run.run_id)
    assert of(events, EventType.STEP_COMPLETED) == []
    assert events[-1].type is EventType.RUN_CANCELLED


async def test_steps_not_yet_started_never_start(
    servers: Servers, backends: Any, scheduling: lf.Client
) -> None:
    run = await scheduling.start(waiting.parked_fanout, 3)
    await wait_for_events(
        scheduling, run.run_id, lambda ev: len(of(ev, EventType.STEP_CREATED)) == 3
    )
    done = await asyncio.to_thread(
        cli, servers, backends.names.namespace, "runs", "cancel", run.run_id
    )
    assert done.returncode == 0, done.stderr
    command = ["worker", APP, "--queues", "parked"]
    with processes(servers, backends.names.namespace, [command]):
        await asyncio.sleep(2.0)
        assert await backends.broker.queue_depth(backends.names.step_queue("parked")) == 0
    events = await scheduling.events(run.run_id)
    assert of(events, EventType.STEP_STARTED) == []


# --- child workflows ---------------------------------------------------------------------


@pytest.mark.parametrize("squatter", ["same workflow", "other workflow"])
async def test_a_child_whose_run_id_was_taken_fails_in_the_parent_instead_of_hanging(
    running: lf.Client, squatter: str
) -> None:
    """Child run ids are predictable: a run a producer started there is not adopted."""
    parent_id = f"parent-{squatter.replace(' ', '-')}"
    if squatter == "same workflow":
        taken = await running.start(arith.failing, "squatting", run_id=f"{parent_id}.s1")
    else:
        taken = await running.start(arith.total, 2, run_id=f"{parent_id}.s1")
    with contextlib.suppress(lf.WorkflowFailedError):
        await taken.result(timeout=30)
    run = await running.start(waiting.parent_of_failing, "boom", run_id=parent_id)
    outcome = await run.result(timeout=30)
    assert outcome.startswith("child failed: ledgerflow.ChildRunIdTakenError")
    assert f"run id '{parent_id}.s1' is taken" in outcome
    first = (await running.events(taken.run_id))[0]
    assert "parent" not in first.data  # the squatter was left alone


async def test_child_workflows_are_linked_and_awaited(running: lf.Client) -> None:
    run = await running.start(waiting.parent, 3)
    assert await run.result(timeout=30) == arith.expected_total(3) + arith.expected_total(4)
    events = await running.events(run.run_id)
    children = [e for e in of(events, EventType.STEP_CREATED)]
    assert [e.data["name"] for e in children] == ["workflow:it_total"] * 2
    for created in children:
        child_id = created.data["child_run_id"]
        child_events = await running.events(child_id)
        assert child_events[0].data["parent"] == {"run_id": run.run_id, "corr": created.corr}
        assert child_events[-1].type is EventType.RUN_COMPLETED
    assert Counter(e.type for e in events)[EventType.STEP_COMPLETED] == 2


async def test_a_failing_child_raises_in_the_parent(running: lf.Client) -> None:
    run = await running.start(waiting.parent_of_failing, "broken child")
    result = await run.result(timeout=30)
    assert result.startswith("child failed: ledgerflow.StepFailedError")
    assert "broken child" in result


async def test_cancelling_a_parent_cancels_its_children(running: lf.Client) -> None:
    run = await running.start(waiting.parent_of_sleepers, 30.0)
    events = await wait_for_events(
        running, run.run_id, lambda ev: len(of(ev, EventType.STEP_STARTED)) == 2
    )
    child_ids = [e.data["child_run_id"] for e in of(events, EventType.STEP_CREATED)]
    await running.cancel(run.run_id, reason="stop everything")
    with pytest.raises(lf.RunCancelled):
        await run.result(timeout=10)
    for child_id in child_ids:
        with pytest.raises(lf.RunCancelled, match="parent run"):
            await running.result(child_id, timeout=10)


# --- replay safety -----------------------------------------------------------------------


async def test_determinism_helpers_give_equal_values_on_replay(running: lf.Client) -> None:
    run = await running.start(waiting.deterministic)
    values = await run.result(timeout=30)
    events = await running.events(run.run_id)
    replayed = WorkflowInstance(run.run_id, workflows.get("wt_deterministic"), [], {})
    replayed.feed(events)
    outcome = replayed.decide().outcome
    assert outcome is not None
    assert getattr(outcome, "result", None) == values
    assert values[0] != values[3] or values[1] != values[4]  # time or ids moved on
    assert json.dumps(values)
