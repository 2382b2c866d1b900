"""WorkflowInstance: replay from a recorded log, batching invariance, divergence, errors."""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import random
import uuid
from collections.abc import Sequence
from typing import Any

import pytest
from ledgerflow.eventlog.errors import ReplayDivergenceError
from ledgerflow.eventlog.events import Event, EventType
from ledgerflow.scheduler.replay import Completed, Failed, StepCommand, WorkflowInstance
from ledgerflow.worker.registry import StepDef

import ledgerflow as lf

from .helpers import (
    LogBuilder,
    command_key,
    counts,
    instance_for,
    replay_at_once,
    stack,
    summary,
    unique_namespace,
)

# --- steps and workflows (registered once, under unique names) ------------------------


@lf.step(name="unit_replay_add")
async def add(a: int, b: int) -> int:
    return a + b


# No retries: a failing step is recorded failed at once (the default policy backs off).
@lf.step(name="unit_replay_decline", retry=lf.RetryPolicy(max_attempts=1))
async def decline(card: str) -> None:
    raise ValueError(f"card declined: {card}")


@lf.workflow(name="unit_replay_mixed")
async def mixed(n: int) -> dict[str, Any]:
    t0, u0, r0 = lf.now(), lf.uuid4(), lf.random()
    parts = await asyncio.gather(*(add(i, i) for i in range(n)))
    total = 0
    for part in parts:
        total = await add(total, part)
    try:
        await decline("4242")
        note = "no error"
    except lf.StepFailedError as exc:
        note = exc.message
    return {
        "total": total,
        "t": [t0, lf.now()],
        "u": [u0, lf.uuid4()],
        "r": [r0, lf.random()],
        "note": note,
    }


async def record(workflow: Any, *args: Any) -> tuple[str, Any, list[Event]]:
    """Run a workflow embedded and return (run_id, result, its log)."""
    async with lf.embedded(unique_namespace()) as client:
        run = await client.start(workflow, *args)
        result = await run.result(timeout=5)
        return run.run_id, result, await client.events(run.run_id)


# --- full replay ----------------------------------------------------------------------


async def test_full_replay_issues_nothing_and_reaches_the_same_result() -> None:
    run_id, result, events = await record(mixed, 4)
    assert result["total"] == 12
    assert result["note"] == "card declined: 4242"
    assert counts(events)["step_created"] == 4 + 4 + 1
    instance = instance_for(run_id, events, mixed.definition.fn)
    instance.feed(events)
    decision = instance.decide()
    assert decision.commands == []
    assert decision.outcome == Completed(result)
    assert instance.events_seen == len(events)
    assert instance.cursor == events[-1].id


async def test_feeding_events_twice_is_a_no_op() -> None:
    """Two activations of one run can read the same tail; the second feed must change nothing."""
    run_id, result, events = await record(mixed, 4)
    instance = instance_for(run_id, events, mixed.definition.fn)
    half = len(events) // 2
    instance.feed(events[:half])
    first = instance.decide()
    instance.feed(events[: half + 3])  # overlaps what was fed
    instance.feed(events)
    instance.feed(events)
    assert instance.divergence is None
    assert instance.events_seen == len(events)
    assert instance.decide().outcome == Completed(result)
    assert first.outcome is None


async def test_settled_positions_are_forgotten() -> None:
    """A cached instance keeps what is in flight, not the whole run (flat memory)."""
    run_id, _, events = await record(mixed, 4)
    instance = instance_for(run_id, events, mixed.definition.fn)
    instance.feed(events)
    assert instance._recorded == {}
    assert instance._issued == {}
    assert instance._futures == {}
    assert instance._children_started == set()  # only children are remembered


async def test_now_uuid_random_are_replay_safe() -> None:
    run_id, result, events = await record(mixed, 2)
    replayed = replay_at_once(run_id, events, mixed.definition.fn)
    assert isinstance(replayed.outcome, Completed)
    assert replayed.outcome.result["t"] == result["t"]
    assert replayed.outcome.result["u"] == result["u"]
    assert replayed.outcome.result["r"] == result["r"]
    # The values come from the log, not the wall clock: t0 is run_started's timestamp.
    started = next(e for e in events if e.type is EventType.RUN_STARTED)
    assert result["t"][0] == dt.datetime.fromtimestamp(started.ts / 1000, tz=dt.UTC)
    assert result["t"][0] <= result["t"][1]
    u0, u1 = result["u"]
    assert isinstance(u0, uuid.UUID) and u0.version == 4 and u0 != u1
    assert all(0.0 <= r < 1.0 for r in result["r"]) and result["r"][0] != result["r"][1]
    # A different run gets different values.
    _, other, _ = await record(mixed, 2)
    assert other["u"] != result["u"]
    assert other["r"] != result["r"]


def test_now_uuid_random_outside_a_workflow_are_the_real_thing() -> None:
    assert abs(lf.now() - dt.datetime.now(dt.UTC)) < dt.timedelta(seconds=5)
    assert lf.uuid4() != lf.uuid4()
    assert 0.0 <= lf.random() < 1.0


# --- batching: the sticky cache must equal a replay from scratch ----------------------


def pending(emitted: list[StepCommand], prefix: Sequence[Event]) -> list[Any]:
    """Commands an incremental instance emitted that the prefix does not yet record."""
    recorded = {e.corr for e in prefix if e.type is EventType.STEP_CREATED}
    return sorted(
        (command_key(c) for c in emitted if c.corr not in recorded),
        key=lambda k: int(k[0][1:]),
    )


def check_batches(
    run_id: str, events: list[Event], fn: Any, cuts: list[int], *, same_code: bool = True
) -> None:
    """Feed ``events`` cut at ``cuts``; after each batch compare with a fresh full replay."""
    sticky = instance_for(run_id, events, fn)
    emitted: list[StepCommand] = []
    bounds = [0, *cuts, len(events)]
    for lo, hi in itertools.pairwise(bounds):
        sticky.feed(events[lo:hi])
        decision = sticky.decide()
        emitted.extend(decision.commands)
        fresh = replay_at_once(run_id, events, fn, upto=hi)
        where = f"cuts={cuts} at {hi}"
        assert summary(decision.outcome) == summary(fresh.outcome), where
        expected = sorted((command_key(c) for c in fresh.commands), key=lambda k: int(k[0][1:]))
        assert pending(emitted, events[:hi]) == expected, where
    corrs = [c.corr for c in emitted]
    assert len(corrs) == len(set(corrs)), f"a step was asked for twice: {corrs}"
    if not same_code:
        sticky.close()
        return
    # Everything the sticky instance asked for is what the log recorded at that position.
    created = {e.corr: e for e in events if e.type is EventType.STEP_CREATED}
    for command in emitted:
        assert created[command.corr].data["name"] == command.step.name
        assert created[command.corr].record == command.record()
    sticky.close()


async def test_every_single_split_point_matches_full_replay() -> None:
    run_id, result, events = await record(mixed, 5)
    assert len(events) > 30
    for k in range(len(events) + 1):
        check_batches(run_id, events, mixed.definition.fn, [k])
    final = replay_at_once(run_id, events, mixed.definition.fn)
    assert final.outcome == Completed(result)


async def test_random_multi_batch_splits_match_full_replay() -> None:
    run_id, _result, events = await record(mixed, 6)
    rng = random.Random(20240611)
    for _ in range(60):
        n_cuts = rng.randint(1, 8)
        cuts = sorted(rng.choices(range(len(events) + 1), k=n_cuts))  # repeats: empty batches
        check_batches(run_id, events, mixed.definition.fn, cuts)


async def test_one_event_at_a_time_matches_full_replay() -> None:
    run_id, result, events = await record(mixed, 3)
    check_batches(run_id, events, mixed.definition.fn, list(range(1, len(events))))
    instance = instance_for(run_id, events, mixed.definition.fn)
    for event in events:
        instance.feed([event])
        instance.decide()
    assert instance.decide() == type(instance.decide())(commands=[], outcome=Completed(result))


# --- divergence -----------------------------------------------------------------------


@lf.step(name="unit_div_a")
async def step_a(x: int) -> int:
    return x + 1


@lf.step(name="unit_div_b")
async def step_b(x: int) -> int:
    return x * 2


@lf.step(name="unit_div_c")
async def step_c(x: int) -> int:
    return x - 1


@lf.workflow(name="unit_div_original")
async def original(x: int) -> int:
    return await step_b(await step_a(x))


async def changed_second_call(x: int) -> int:
    return await step_c(await step_a(x))


async def removed_second_call(x: int) -> int:
    return await step_a(x)


async def test_changed_call_diverges_naming_position_and_both_steps() -> None:
    run_id, result, events = await record(original, 3)
    assert result == 8
    decision = replay_at_once(run_id, events, changed_second_call)
    assert decision.commands == []
    assert isinstance(decision.outcome, Failed)
    error = decision.outcome.error
    assert isinstance(error, ReplayDivergenceError)
    assert error.position == "s2"
    message = str(error)
    assert "s2" in message and "unit_div_b" in message and "unit_div_c" in message
    assert run_id in message


async def test_changed_call_diverges_whatever_the_batching() -> None:
    run_id, _, events = await record(original, 3)
    for k in range(1, len(events)):
        instance = instance_for(run_id, events, changed_second_call)
        instance.feed(events[:k])
        instance.decide()
        instance.feed(events[k:])
        outcome = instance.decide().outcome
        assert isinstance(outcome, Failed), k
        assert isinstance(outcome.error, ReplayDivergenceError), k
        assert outcome.error.position == "s2", k


@pytest.mark.parametrize("fn", [changed_second_call, removed_second_call])
async def test_divergent_code_sticky_equals_full_replay_at_every_split(fn: Any) -> None:
    run_id, _, events = await record(original, 3)
    for k in range(len(events) + 1):
        check_batches(run_id, events, fn, [k], same_code=False)
    rng = random.Random(7)
    for _ in range(30):
        cuts = sorted(rng.choices(range(len(events) + 1), k=3))
        check_batches(run_id, events, fn, cuts, same_code=False)


async def test_removed_call_diverges() -> None:
    run_id, _, events = await record(original, 3)
    decision = replay_at_once(run_id, events, removed_second_call)
    assert isinstance(decision.outcome, Failed)
    error = decision.outcome.error
    assert isinstance(error, ReplayDivergenceError)
    assert error.position == "s2"
    assert "unit_div_b" in str(error)
    assert "nothing there" in str(error)


async def test_catching_the_divergence_does_not_hide_it() -> None:
    async def swallowing(x: int) -> str:
        await step_a(x)
        try:
            await step_c(x)
        except Exception:
            return "pretend all is well"
        return "unreachable"

    run_id, _, events = await record(original, 3)
    outcome = replay_at_once(run_id, events, swallowing).outcome
    assert isinstance(outcome, Failed)
    assert isinstance(outcome.error, ReplayDivergenceError)


# --- fan-out and result order (synthetic logs) ---------------------------------------


async def fan_out(n: int) -> list[int]:
    return list(await asyncio.gather(*(add(i, 10 * i) for i in range(n))))


async def completion_order(n: int) -> list[int]:
    order: list[int] = []

    async def one(i: int) -> int:
        value = await add(i, 0)
        order.append(i)
        return value

    await asyncio.gather(*(one(i) for i in range(n)))
    return order


def test_fan_out_issues_all_steps_in_one_decision_in_argument_order() -> None:
    n = 7
    builder = LogBuilder("unit_replay_fanout", [n])
    log = builder.start()
    instance = instance_for("run-fanout", log, fan_out)
    instance.feed(log)
    decision = instance.decide()
    assert decision.outcome is None
    assert [c.corr for c in decision.commands] == [f"s{i}" for i in range(1, n + 1)]
    assert {c.step.name for c in decision.commands} == {"unit_replay_add"}
    assert [StepDef.decode_args(c.args) for c in decision.commands] == [
        ([i, 10 * i], {}) for i in range(n)
    ]
    assert instance.decide().commands == []  # handed out once
    # Record the creations and complete the steps in reverse order.
    later = [builder.created(c) for c in decision.commands]
    later += [builder.completed(f"s{i}", 11 * (i - 1)) for i in range(n, 0, -1)]
    instance.feed(later)
    final = instance.decide()
    assert final.commands == []
    assert final.outcome == Completed([11 * i for i in range(n)])


@pytest.mark.parametrize("order", [[2, 3, 1], [3, 1, 2], [1, 2, 3], [3, 2, 1]])
def test_results_are_delivered_in_log_order(order: list[int]) -> None:
    builder = LogBuilder("unit_replay_order", [3])
    log = builder.start()
    instance = instance_for("run-order", log, completion_order)
    instance.feed(log)
    commands = instance.decide().commands
    log += [builder.created(c) for c in commands]
    log += [builder.completed(f"s{i}", i - 1) for i in order]
    expected = Completed([i - 1 for i in order])
    for cut in range(len(log) + 1):
        fresh = instance_for("run-order", log, completion_order)
        fresh.feed(log[:cut])
        fresh.feed(log[cut:])
        assert fresh.decide().outcome == expected, cut


def test_step_failed_event_becomes_step_failed_error_in_the_workflow() -> None:
    async def wf() -> dict[str, Any]:
        try:
            await decline("1")
        except lf.StepFailedError as exc:
            return {
                "step": exc.step_name,
                "type": exc.type_name,
                "message": exc.message,
                "tb": exc.traceback_text,
                "attempts": exc.attempts,
            }
        return {}

    builder = LogBuilder("unit_replay_failed_event")
    log = builder.start()
    instance = instance_for("run-failed-event", log, wf)
    instance.feed(log)
    (command,) = instance.decide().commands
    instance.feed([builder.created(command), builder.failed("s1", "KeyError", "'sku'")])
    assert instance.decide().outcome == Completed(
        {
            "step": "unit_replay_decline",
            "type": "KeyError",
            "message": "'sku'",
            "tb": "Traceback: ...",
            "attempts": 1,
        }
    )


# --- step failures and workflow errors, end to end -----------------------------------


@lf.workflow(name="unit_replay_catches")
async def catches_failure(card: str) -> dict[str, Any]:
    try:
        await decline(card)
    except lf.StepFailedError as exc:
        return {
            "fallback": True,
            "step": exc.step_name,
            "type": exc.type_name,
            "message": exc.message,
            "tb": exc.traceback_text,
            "attempts": exc.attempts,
        }
    return {"fallback": False}


@lf.workflow(name="unit_replay_uncaught")
async def uncaught_failure(card: str) -> None:
    await decline(card)


@lf.workflow(name="unit_replay_raises")
async def raising_workflow_body(x: int) -> None:
    await add(x, x)
    raise ValueError(f"bad total {x}")


async def test_caught_step_failure_lets_the_run_complete() -> None:
    _, result, events = await record(catches_failure, "4000-0002")
    assert result["fallback"] is True
    assert result["step"] == "unit_replay_decline"
    assert result["type"] == "ValueError"
    assert result["message"] == "card declined: 4000-0002"
    assert "decline" in result["tb"] and "card declined" in result["tb"]
    assert result["attempts"] == 1
    tally = counts(events)
    assert tally["step_failed"] == 1 and tally["run_completed"] == 1
    assert tally["run_failed"] == 0


async def test_uncaught_step_failure_fails_the_run() -> None:
    async with lf.embedded(unique_namespace()) as client:
        run = await client.start(uncaught_failure, "5555")
        with pytest.raises(lf.WorkflowFailedError) as info:
            await run.result(timeout=5)
        assert info.value.type_name == "ledgerflow.StepFailedError"
        assert "card declined: 5555" in info.value.message
        assert "unit_replay_decline" in info.value.message
        assert (await client.state(run.run_id)).status == "failed"


async def test_workflow_raising_fails_with_its_type_and_traceback() -> None:
    async with lf.embedded(unique_namespace()) as client:
        run = await client.start(raising_workflow_body, 21)
        with pytest.raises(lf.WorkflowFailedError) as info:
            await run.result(timeout=5)
        assert info.value.type_name == "ValueError"
        assert info.value.message == "bad total 21"
        assert "raising_workflow_body" in info.value.traceback_text
        assert "ValueError: bad total 21" in info.value.traceback_text
        events = await client.events(run.run_id)
        assert counts(events)["step_completed"] == 1
        assert events[-1].type is EventType.RUN_FAILED


# --- serialization and arity at the call site ----------------------------------------


class Opaque:
    """Not a dataclass, not registered: ledgerflow cannot serialize it."""


@lf.workflow(name="unit_replay_bad_arg_caught")
async def bad_arg_caught() -> dict[str, Any]:
    try:
        await add(Opaque(), 1)  # type: ignore[arg-type]
        message = "no error"
    except lf.SerializationError as exc:
        message = str(exc)
    return {"message": message, "after": await add(2, 3)}


@lf.workflow(name="unit_replay_bad_arg")
async def bad_arg_uncaught() -> int:
    return await add(1, Opaque())  # type: ignore[arg-type]


async def test_unserializable_step_argument_fails_at_the_call_site() -> None:
    _, result, events = await record(bad_arg_caught)
    message = result["message"]
    assert "argument 'a'" in message
    assert "unit_replay_add" in message
    assert "Opaque" in message
    assert result["after"] == 5
    created = [e for e in events if e.type is EventType.STEP_CREATED]
    # Only the good call was recorded, and it got the first position.
    assert [(e.corr, StepDef.decode_args(e.data["args"])) for e in created] == [
        ("s1", ([2, 3], {}))
    ]


async def test_uncaught_unserializable_step_argument_fails_the_run_writing_no_step() -> None:
    async with lf.embedded(unique_namespace()) as client:
        run = await client.start(bad_arg_uncaught)
        with pytest.raises(lf.WorkflowFailedError) as info:
            await run.result(timeout=5)
        assert info.value.type_name == "ledgerflow.SerializationError"
        assert "argument 'b'" in info.value.message and "Opaque" in info.value.message
        tally = counts(await client.events(run.run_id))
        assert tally["step_created"] == 0
        assert tally["run_failed"] == 1


async def test_start_with_unserializable_argument_writes_and_sends_nothing() -> None:
    async with stack(run_worker=False, run_scheduler=False) as s:
        with pytest.raises(lf.SerializationError) as info:
            await s.client.start(mixed, Opaque(), run_id="unit-bad-start")  # type: ignore[arg-type]
        assert "argument 'n'" in str(info.value) and "Opaque" in str(info.value)
        assert "unit_replay_mixed" in str(info.value)
        with pytest.raises(lf.SerializationError):
            await s.client.start("unit_replay_unknown_name", Opaque(), run_id="unit-bad-start")
        assert await s.client.events("unit-bad-start") == []
        assert not await s.store.exists("unit-bad-start")
        assert await s.broker.queue_depth(s.names.runs_queue) == 0


async def test_start_with_bad_arity_raises_type_error_naming_the_workflow() -> None:
    async with stack(run_worker=False, run_scheduler=False) as s:
        with pytest.raises(TypeError, match="unit_replay_mixed"):
            await s.client.start(mixed, 1, 2, run_id="unit-bad-arity")  # type: ignore[call-arg]
        assert not await s.store.exists("unit-bad-arity")


def test_bad_arity_to_a_step_raises_type_error_naming_the_step() -> None:
    async def wf() -> int:
        return await add(1)  # type: ignore[call-arg]

    log = LogBuilder("unit_replay_arity").start()
    instance = instance_for("run-arity", log, wf)
    instance.feed(log)
    decision = instance.decide()
    assert decision.commands == []
    assert isinstance(decision.outcome, Failed)
    assert type(decision.outcome.error) is TypeError
    assert "unit_replay_add" in str(decision.outcome.error)
    assert "'b'" in str(decision.outcome.error)
    with pytest.raises(TypeError, match="unit_replay_add"):
        add.definition.encode_args((1, 2), {"c": 3})


def test_instance_close_cancels_a_blocked_workflow() -> None:
    builder = LogBuilder("unit_replay_close", [2])
    log = builder.start()
    instance: WorkflowInstance = instance_for("run-close", log, fan_out)
    instance.feed(log)
    assert len(instance.decide().commands) == 2
    instance.close()
    assert instance.loop.is_closed()
    assert instance._task is not None and instance._task.cancelled()
