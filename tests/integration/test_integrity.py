"""Hostile identifiers, delays, hook tokens and step messages on the real servers (issue 11).

Items 2 (run ids and the timer index), 6 (delays), 7 (hook token clashes) and
11 (forged step messages); the append script's first pass (item 8) is in the
store conformance suite.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from ledgerflow.broker import (
    REASON_HEADER,
    Activation,
    Delivery,
    StepBatch,
    StepMessage,
    encode_message,
)
from ledgerflow.broker.messages import decode_message
from ledgerflow.eventlog import statushash as sh
from ledgerflow.eventlog.events import Event, EventType
from ledgerflow.eventlog.names import Names
from ledgerflow.worker.registry import steps
from ledgerflow.worker.service import Worker

import ledgerflow as lf
from tests.apps import arith, flaky, integrity, waiting
from tests.integration.test_worker_failures import wait_for_events
from tests.processes import cli
from tests.servers import Servers

pytestmark = pytest.mark.integration


def of(events: list[Event], kind: EventType) -> list[Event]:
    return [e for e in events if e.type is kind]


@pytest.fixture
def label(namespace: str) -> str:
    return f"{namespace}:test:attempts"


async def attempts(redis_client: aioredis.Redis, label: str) -> int:
    return int(await redis_client.get(label) or 0)


async def dead_letter(backends: Any, timeout: float = 15) -> Delivery:
    delivery = await backends.broker.get(backends.names.dead_queue, timeout=timeout)
    assert delivery is not None, "nothing reached the dead-letter queue"
    await delivery.ack()
    return delivery


# --- item 2: run ids, hook tokens, and the shared timer index -----------------------------


async def test_malformed_timer_entries_never_stall_other_runs(
    running: lf.Client, redis_client: aioredis.Redis, names: Names, label: str
) -> None:
    """One foreign entry per shard, already due: healthy sleeps and retries still fire."""
    planted: list[str | bytes] = [
        "wait|with|a|bar|0|0",
        "retry|x{y}|s1|2|0",
        "hb|run|s1|-1|500",
        b"\xff\xfe|not utf-8",
    ]
    for shard in names.timer_shards():
        await redis_client.zadd(shard, dict.fromkeys(planted, 0))
    sleeper = await running.start(waiting.sleeper, 0.3)
    retried = await running.start(flaky.one, "rate_limited", label, 0.3)
    assert await sleeper.result(timeout=30) >= 0.3
    assert await retried.result(timeout=30) == "served"
    assert len(of(await running.events(retried.run_id), EventType.STEP_RETRYING)) == 1
    for shard in names.timer_shards():
        for member in planted:
            assert await redis_client.zscore(shard, member) is None, (shard, member)


@pytest.mark.parametrize("run_id", ["a|b", "x{y}", "with space", "x" * 201, ""])
async def test_a_run_id_outside_the_rule_is_refused_at_start(
    running: lf.Client, redis_client: aioredis.Redis, names: Names, run_id: str
) -> None:
    with pytest.raises(lf.InvalidArgumentError, match=r"letters, digits, '_', '\.', '-' and ':'"):
        await running.start(arith.total, 1, run_id=run_id)
    for pattern in (f"{names.namespace}:run:*", f"{names.namespace}:runs:*"):
        assert [k async for k in redis_client.scan_iter(match=pattern)] == []


async def test_a_hook_token_outside_the_rule_is_refused_by_resume(running: lf.Client) -> None:
    for token in ("a b", "a|b", "", "t" * 257):
        with pytest.raises(lf.InvalidArgumentError, match="printable ASCII"):
            await running.resume_hook(token, 1)


async def test_a_live_hook_from_before_the_token_rule_stays_resumable(
    running: lf.Client, backends: Any, redis_client: aioredis.Redis, namespace: str
) -> None:
    """Its token breaks today's rule, but it was created when that was allowed."""
    run = await running.start(waiting.approval, f"{namespace}-legacy")
    await wait_for_events(running, run.run_id, lambda ev: bool(of(ev, EventType.HOOK_CREATED)))
    names = backends.names
    legacy = "order 42 (legacy)"
    token = f"approve-{namespace}-legacy"
    owner = await redis_client.hget(names.hook_tokens_for(token), token)
    # Registered, and recorded in its run's status hash, under the old token.
    _run_id, _, corr = owner.decode().partition("|")
    await redis_client.hset(names.hook_tokens_for(legacy), legacy, owner)
    await redis_client.hset(names.status(run.run_id), sh.token_field(corr), legacy)
    assert await running.resume_hook(legacy, "still works") == run.run_id
    assert await run.result(timeout=30) == "still works"


async def test_the_cli_refuses_bad_run_ids_and_tokens_as_bad_usage(
    servers: Servers, namespace: str
) -> None:
    commands = [
        ["start", "tests.apps.arith:total", "--args", "[1]", "--run-id", "a|b"],
        ["runs", "show", "a b"],
        ["runs", "events", "x{y}"],
        ["runs", "state", "a|b", "--at", "1"],
        ["runs", "redrive", "ok-1", "bad|2"],
        ["runs", "export", "a b"],
        ["hooks", "resume", "a b", "--payload", "1"],
    ]
    for command in commands:
        done = await asyncio.to_thread(cli, servers, namespace, *command)
        assert done.returncode == 2, (command, done.stdout, done.stderr)
        assert "invalid run id" in done.stderr or "invalid hook token" in done.stderr, done.stderr
        assert "Traceback" not in done.stderr


async def test_an_activation_with_a_bad_run_id_is_dead_lettered(
    scheduling: lf.Client, backends: Any
) -> None:
    body = encode_message(Activation(run_id="a|b"))  # encoding does not check: a forger's
    await backends.broker.publish(backends.names.runs_queue, body)
    dead = await dead_letter(backends)
    assert dead.body == body
    assert "'run_id': invalid run id 'a|b'" in str(dead.headers[REASON_HEADER])
    run = await scheduling.start(arith.total, 2)  # the scheduler carries on (no worker here)
    await wait_for_events(scheduling, run.run_id, lambda ev: bool(of(ev, EventType.STEP_CREATED)))


async def test_a_huge_name_in_a_step_message_is_parked_with_a_bounded_reason(
    scheduling: lf.Client, backends: Any, worker: Worker, label: str
) -> None:
    """The reason quotes the name: uncut, its header frame made RabbitMQ drop the connection."""
    await worker.start()
    hostile = StepMessage("run-1", "s1", "n" * 300_000, 1, b"\x92\x90\x80", "default")
    await backends.broker.publish_step(hostile)
    dead = await dead_letter(backends)
    reason = str(dead.headers[REASON_HEADER])
    assert reason.startswith("malformed message: step message field 'step_name' is 300000")
    # The longest name a message may carry: unknown here, and quoted, cut, in the reason.
    longest = StepMessage("run-1", "s2", "n" * 1000, 1, b"\x92\x90\x80", "default")
    await backends.broker.publish_step(longest)
    dead = await dead_letter(backends)
    reason = str(dead.headers[REASON_HEADER])
    assert reason.startswith("no step named 'nnnn") and "characters cut" in reason
    assert len(reason) <= 1000
    run = await scheduling.start(integrity.charge_one, label, 4)  # the worker still serves
    assert await run.result(timeout=30) == 4


# --- item 6: delays that cannot be honoured -------------------------------------------------


@pytest.mark.parametrize("kind", ["inf", "huge", "nan", "text"])
async def test_a_retry_after_that_cannot_be_honoured_fails_the_step_saying_why(
    running: lf.Client, label: str, kind: str
) -> None:
    run = await running.start(integrity.retry_after_wf, label, kind)
    result = await run.result(timeout=30)
    assert result.startswith("1: ledgerflow.InvalidArgumentError: RetryableError.retry_after")
    assert "failed, not retried" in result and "slow down" in result
    events = await running.events(run.run_id)
    assert of(events, EventType.STEP_RETRYING) == []
    assert len(of(events, EventType.STEP_FAILED)) == 1


@pytest.mark.parametrize("kind", ["inf", "huge", "nan", "timedelta_max", "text"])
async def test_a_sleep_that_cannot_be_honoured_raises_in_the_workflow(
    running: lf.Client, kind: str
) -> None:
    run = await running.start(integrity.sleep_caught, kind)
    result = await run.result(timeout=30)
    assert result.startswith("refused: lf.sleep() delay")
    assert of(await running.events(run.run_id), EventType.WAIT_CREATED) == []


async def test_an_uncaught_bad_sleep_fails_the_run_with_the_reason(
    running: lf.Client, backends: Any
) -> None:
    run = await running.start(integrity.sleep_uncaught, "huge")
    with pytest.raises(lf.WorkflowFailedError, match="cannot be honoured") as info:
        await run.result(timeout=30)
    assert info.value.type_name == "ledgerflow.InvalidArgumentError"
    assert await backends.broker.queue_depth(backends.names.dead_queue) == 0


async def test_a_wait_for_timeout_that_cannot_be_honoured_raises_in_the_workflow(
    running: lf.Client, label: str
) -> None:
    run = await running.start(integrity.wait_for_caught, label, "nan")
    assert (await run.result(timeout=30)).startswith("refused: lf.wait_for() timeout")
    assert of(await running.events(run.run_id), EventType.STEP_CREATED) == []


async def test_a_decision_the_log_refuses_fails_the_run_instead_of_looping(
    running: lf.Client, backends: Any
) -> None:
    """A bad value that slips past every call-site check: run_failed, not a poisoned activation."""
    run = await running.start(integrity.slipped_through)
    with pytest.raises(lf.WorkflowFailedError, match="field 'due'") as info:
        await run.result(timeout=30)
    assert info.value.type_name == "ledgerflow.AppendArgumentError"
    (failed,) = of(await running.events(run.run_id), EventType.RUN_FAILED)
    assert failed.data["recorded_by"] == "scheduler"
    assert await backends.broker.queue_depth(backends.names.dead_queue) == 0


# --- item 7: hook tokens clash ---------------------------------------------------------------


async def test_a_token_held_by_another_run_is_a_catchable_conflict(
    running: lf.Client, namespace: str
) -> None:
    token = f"{namespace}-shared"
    owner = await running.start(integrity.hook_or_conflict, token)
    await wait_for_events(running, owner.run_id, lambda ev: bool(of(ev, EventType.HOOK_CREATED)))
    latecomer = await running.start(integrity.hook_or_conflict, token)
    assert await latecomer.result(timeout=30) == f"conflict with {owner.run_id}"
    events = await running.events(latecomer.run_id)
    (created,) = of(events, EventType.HOOK_CREATED)
    assert created.data["conflict"] == {"run": owner.run_id}
    (disposed,) = of(events, EventType.HOOK_DISPOSED)
    assert disposed.data == {"reason": "token conflict"}
    await running.resume_hook(token, "mine")
    assert await owner.result(timeout=30) == "got mine"


# --- item 11: forged step messages ------------------------------------------------------------


@pytest.fixture
async def worker(backends: Any) -> AsyncIterator[Worker]:
    """A worker started by the test (once it has put the queue in the state it wants)."""
    built = Worker(backends.store, backends.broker, concurrency=4)
    yield built
    await built.stop(grace=5)


async def take_honest(backends: Any) -> StepMessage | StepBatch:
    """The scheduler's own step message, taken off the queue so the test decides what runs."""
    delivery = await backends.broker.get(backends.names.step_queue(), timeout=15)
    assert delivery is not None
    await delivery.ack()
    message = decode_message(delivery.body)
    assert isinstance(message, (StepMessage, StepBatch))
    return message


def args_of(step: str, *args: Any) -> bytes:
    return steps.get(step).encode_args(args, {})


async def test_a_step_message_with_forged_arguments_is_dead_lettered_not_run(
    scheduling: lf.Client, backends: Any, worker: Worker, redis_client: aioredis.Redis, label: str
) -> None:
    run = await scheduling.start(integrity.charge_one, label, 5)
    honest = await take_honest(backends)
    assert isinstance(honest, StepMessage)
    forged = StepMessage(
        run.run_id, "s1", "ig_charge", 1, args_of("ig_charge", label, 1_000_000), "default"
    )
    await backends.broker.publish_step(forged)
    await worker.start()
    dead = await dead_letter(backends)
    reason = str(dead.headers[REASON_HEADER])
    assert f"forged step message: run {run.run_id!r} step 's1'" in reason
    assert "arguments" in reason and "not run" in reason
    assert decode_message(dead.body) == forged
    assert await attempts(redis_client, label) == 0
    assert of(await scheduling.events(run.run_id), EventType.STEP_STARTED) == []
    await backends.broker.publish_step(honest)
    assert await run.result(timeout=30) == 5
    assert await attempts(redis_client, label) == 1


async def test_a_step_message_naming_another_step_is_dead_lettered_not_run(
    scheduling: lf.Client, backends: Any, worker: Worker, redis_client: aioredis.Redis, label: str
) -> None:
    run = await scheduling.start(integrity.charge_one, label, 5)
    honest = await take_honest(backends)
    assert isinstance(honest, StepMessage)
    forged = StepMessage(
        run.run_id, "s1", "ig_refund", 1, args_of("ig_refund", label, 5), "default"
    )
    await backends.broker.publish_step(forged)
    await worker.start()
    reason = str((await dead_letter(backends)).headers[REASON_HEADER])
    assert "step name 'ig_refund', the log's 'ig_charge'" in reason
    assert await attempts(redis_client, f"{label}:refund") == 0
    await backends.broker.publish_step(honest)
    assert await run.result(timeout=30) == 5


async def test_a_forged_message_with_a_huge_attempt_cannot_fail_the_step(
    scheduling: lf.Client, backends: Any, worker: Worker, label: str
) -> None:
    """Past max_attempts a delivery records WorkerLostError; its step_started goes first."""
    run = await scheduling.start(integrity.charge_one, label, 5)
    honest = await take_honest(backends)
    assert isinstance(honest, StepMessage)
    forged = StepMessage(
        run.run_id, "s1", "ig_charge", 1_000_000, args_of("ig_charge", label, 0), "default"
    )
    await backends.broker.publish_step(forged)
    await worker.start()
    assert "forged step message" in str((await dead_letter(backends)).headers[REASON_HEADER])
    events = await scheduling.events(run.run_id)
    assert of(events, EventType.STEP_FAILED) == [] and of(events, EventType.STEP_STARTED) == []
    await backends.broker.publish_step(honest)
    assert await run.result(timeout=30) == 5


async def test_a_batch_with_one_forged_step_runs_the_others_and_parks_only_that_one(
    scheduling: lf.Client, backends: Any, worker: Worker, redis_client: aioredis.Redis, label: str
) -> None:
    run = await scheduling.start(integrity.charge_two, label)
    honest = await take_honest(backends)
    assert isinstance(honest, StepBatch) and [s.step_id for s in honest.steps] == ["s1", "s2"]
    s1, s2 = honest.steps
    forged = StepMessage(
        run.run_id, "s2", "ig_charge", 1, args_of("ig_charge", label, 99), "default"
    )
    await backends.broker.publish_steps([s1, forged])  # one message: a batch of two
    await worker.start()
    dead = await dead_letter(backends)
    parked = decode_message(dead.body)  # a copy describing only the forged step
    assert isinstance(parked, StepMessage)
    assert dataclasses.replace(parked, workflow="") == forged
    assert "step 's2'" in str(dead.headers[REASON_HEADER])
    await wait_for_events(
        scheduling,
        run.run_id,
        lambda ev: [e.corr for e in of(ev, EventType.STEP_COMPLETED)] == ["s1"],
    )
    await backends.broker.publish_step(s2)
    assert await run.result(timeout=30) == 3
    assert await attempts(redis_client, label) == 2


async def test_a_retry_whose_step_created_cannot_be_read_fails_the_step(
    backends: Any, scheduling: lf.Client
) -> None:
    """The timer loop fails the step, saying why, instead of re-arming the timer forever."""
    from ledgerflow.eventlog.events import NewEvent
    from ledgerflow.eventlog.fold import fold
    from ledgerflow.eventlog.timers import Timer, TimerKind

    store, run_id = backends.store, "unreadable-retry"
    await store.append(
        run_id, [NewEvent.of(EventType.RUN_CREATED, data={"workflow": "w"}, workflow="w")]
    )
    await store.append(run_id, [NewEvent.of(EventType.RUN_STARTED)])
    # args of the wrong type: bytes(12345678901) would allocate 11 GB
    hostile = {"name": "x", "queue": "default", "args": 12_345_678_901}
    await store.append(run_id, [NewEvent.of(EventType.STEP_CREATED, "s1", hostile)])
    await store.append(run_id, [NewEvent.of(EventType.STEP_STARTED, "s1", {}, attempt=1)])
    retry = NewEvent.of(
        EventType.STEP_RETRYING,
        "s1",
        {"error": {"type": "E", "message": "m", "traceback": ""}, "delay_ms": 0},
        attempt=1,
        timer=Timer(TimerKind.STEP_RETRY, run_id, "s1", 2),
        delay_ms=0,
    )
    await store.append(run_id, [retry])
    events = await wait_for_events(
        scheduling, run_id, lambda evs: any(e.type is EventType.STEP_FAILED for e in evs)
    )
    step = fold(run_id, events).steps["s1"]
    assert step.status == "failed" and step.attempt == 2
    assert step.error is not None and "cannot be retried" in step.error.message
    assert await store.pending_timers(run_id) == []
