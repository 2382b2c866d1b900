"""Worker + Scheduler + Client in one process on the in-memory backends."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from ledgerflow.broker import (
    QUEUE_HEADER,
    REASON_HEADER,
    Activation,
    StepBatch,
    StepMessage,
    decode_message,
)
from ledgerflow.broker import encode_message as encode
from ledgerflow.eventlog.events import EventType, NewEvent
from ledgerflow.eventlog.store import START
from ledgerflow.worker.registry import StepDef, StepFunction

import ledgerflow as lf

from .helpers import counts, stack, unique_namespace

# --- steps and workflows ---------------------------------------------------------------


@lf.step(name="unit_emb_add")
async def add(a: int, b: int) -> int:
    return a + b


@lf.workflow(name="unit_emb_issue_example")
async def issue_example(n: int) -> int:
    parts = await asyncio.gather(*(add(i, i) for i in range(n)))
    total = 0
    for part in parts:
        total = await add(total, part)
    return total


@lf.workflow(name="unit_emb_chain")
async def chain(n: int) -> int:
    total = 0
    for i in range(n):
        total = await add(total, i)
    return total


@lf.step(name="unit_emb_whoami")
async def whoami() -> dict[str, Any]:
    ctx = lf.step_context()
    return {
        "run_id": ctx.run_id,
        "step_id": ctx.step_id,
        "step_name": ctx.step_name,
        "attempt": ctx.attempt,
        "key": ctx.idempotency_key,
    }


@lf.step(name="unit_emb_whoami_sync")
def whoami_sync() -> list[Any]:
    ctx = lf.step_context()
    return [ctx.step_id, ctx.attempt, ctx.idempotency_key]


@lf.workflow(name="unit_emb_context")
async def context_workflow() -> list[Any]:
    return [await add(1, 1), await whoami(), await whoami_sync()]


async def _never_runs(x: int) -> int:
    return x


# Deliberately not registered: no worker in this process consumes its queue.
nowhere = StepFunction(
    StepDef(name="unit_emb_nowhere", fn=_never_runs, queue="nowhere", signature=None)
)


@lf.workflow(name="unit_emb_blocked")
async def blocked_forever() -> int:
    return await nowhere(1)


CALLS: dict[str, int] = {}


@lf.step(name="unit_emb_counted")
async def counted(tag: str) -> str:
    CALLS[tag] = CALLS.get(tag, 0) + 1
    return tag


@lf.workflow(name="unit_emb_counted_then_blocked")
async def counted_then_blocked(tag: str) -> int:
    await counted(tag)
    return await nowhere(2)


# --- the issue's example -------------------------------------------------------------


async def test_issue_example_fan_out_then_chain() -> None:
    async with lf.embedded(unique_namespace()) as client:
        run = await client.start(issue_example, 10)
        assert await run.result(timeout=5) == 90
        events = await client.events(run.run_id)
        tally = counts(events)
        assert tally["step_created"] == 20
        assert tally["step_started"] == 20
        assert tally["step_completed"] == 20
        assert tally["run_created"] == 1
        assert tally["run_started"] == 1
        assert tally["run_completed"] == 1
        assert tally["step_failed"] == 0 and tally["run_failed"] == 0
        assert events[-1].type is EventType.RUN_COMPLETED and events[-1].data["result"] == 90
        # The fan-out was asked for in one decision: s1..s10 created before any result.
        first_result = next(i for i, e in enumerate(events) if e.type is EventType.STEP_COMPLETED)
        early = [e.corr for e in events[:first_result] if e.type is EventType.STEP_CREATED]
        assert early == [f"s{i}" for i in range(1, 11)]
        state = await client.state(run.run_id)
        assert state.status == "completed" and state.workflow == "unit_emb_issue_example"


async def test_start_with_the_same_run_id_starts_once() -> None:
    async with lf.embedded(unique_namespace()) as client:
        first = await client.start(issue_example, 4, run_id="x")
        second = await client.start(issue_example, 4, run_id="x")
        assert first.run_id == second.run_id == "x"
        assert await first.result(timeout=5) == 12
        assert await second.result(timeout=5) == 12
        third = await client.start(issue_example, 4, run_id="x")  # after it finished
        assert await third.result(timeout=5) == 12
        await asyncio.sleep(0.05)  # let the extra activations be handled
        tally = counts(await client.events("x"))
        assert tally["run_created"] == 1
        assert tally["run_started"] == 1
        assert tally["run_completed"] == 1
        assert tally["step_created"] == 8 and tally["step_completed"] == 8


async def test_result_timeout_on_a_blocked_run() -> None:
    async with lf.embedded(unique_namespace()) as client:
        run = await client.start(blocked_forever)
        started = time.monotonic()
        with pytest.raises(lf.ResultTimeoutError, match=run.run_id):
            await run.result(timeout=0.2)
        assert 0.15 <= time.monotonic() - started < 2.0
        events = await client.events(run.run_id)
        created = [e for e in events if e.type is EventType.STEP_CREATED]
        assert [(e.corr, e.data["name"], e.data["queue"]) for e in created] == [
            ("s1", "unit_emb_nowhere", "nowhere")
        ]
        assert counts(events)["step_started"] == 0
        names = client.broker.names
        assert await client.broker.queue_depth(names.step_queue("nowhere")) == 1
        assert (await client.state(run.run_id)).status == "started"


async def test_result_of_an_unknown_run_raises_not_found() -> None:
    async with lf.embedded(unique_namespace()) as client:
        with pytest.raises(lf.RunNotFoundError):
            await client.result("unit-no-such-run", timeout=0.2)


# --- the step context ------------------------------------------------------------------


async def test_step_context_inside_steps() -> None:
    async with lf.embedded(unique_namespace()) as client:
        run = await client.start(context_workflow)
        two, ctx, sync_ctx = await run.result(timeout=5)
        assert two == 2
        assert ctx == {
            "run_id": run.run_id,
            "step_id": "s2",
            "step_name": "unit_emb_whoami",
            "attempt": 1,
            "key": f"{run.run_id}:s2",
        }
        assert sync_ctx == ["s3", 1, f"{run.run_id}:s3"]  # plain def steps see it too


async def test_step_called_outside_a_workflow_just_runs() -> None:
    assert await add(1, 2) == 3
    assert await add(a=5, b=-2) == 3


def test_step_context_outside_a_step_raises() -> None:
    with pytest.raises(lf.LedgerflowError, match="outside a running step"):
        lf.step_context()


async def test_step_context_in_a_direct_call_raises() -> None:
    with pytest.raises(lf.LedgerflowError):
        await whoami()


# --- the scheduler: sticky cache, coalescing, dead letters -----------------------------


async def test_sticky_cache_is_hit_on_later_activations_of_a_long_chain() -> None:
    async with stack() as s:
        reads: list[str] = []
        original_read = s.store.read

        async def spy(run_id: str, after: str = START, count: int | None = None) -> Any:
            reads.append(after)
            return await original_read(run_id, after, count)

        s.store.read = spy  # type: ignore[method-assign]
        run = await s.client.start(chain, 12)
        assert await run.result(timeout=5) == sum(range(12))
        cache = s.scheduler.cache
        assert cache.hits >= 6, (cache.hits, cache.misses)
        assert cache.misses <= 3, (cache.hits, cache.misses)
        # Most reads are incremental (after a cursor), not from the start of the log.
        incremental = [a for a in reads if a != START]
        assert len(incremental) >= 6
        assert len(incremental) > len(reads) - len(incremental)
        for _ in range(100):  # the result can be seen a moment before the eviction
            if run.run_id not in cache:
                break
            await asyncio.sleep(0.01)
        assert run.run_id not in cache  # evicted once the run ended


async def test_concurrent_activations_of_one_run_are_coalesced() -> None:
    async with stack(run_worker=False, run_scheduler=False) as s:
        run = await s.client.start(issue_example, 3, run_id="unit-coalesce")
        for _ in range(4):
            await s.broker.publish_activation(Activation(run_id=run.run_id, reason="test"))
        deliveries = [await s.broker.get(s.names.runs_queue, timeout=1) for _ in range(5)]
        assert all(d is not None for d in deliveries)
        await asyncio.gather(*(s.scheduler.handle_delivery(d) for d in deliveries if d is not None))
        assert all(d is not None and d.settled for d in deliveries)
        tally = counts(await s.client.events(run.run_id))
        assert tally["run_started"] == 1
        assert tally["step_created"] == 3
        step_queue = s.names.step_queue()
        # Published once, the three steps together in one message.
        assert await s.broker.queue_depth(step_queue) == 1
        delivery = await s.broker.get(step_queue, timeout=1)
        assert delivery is not None
        message = decode_message(delivery.body)
        assert isinstance(message, StepBatch)
        assert [m.step_id for m in message.steps] == ["s1", "s2", "s3"]


async def test_unknown_workflow_is_dead_lettered_and_the_run_stays_created() -> None:
    async with lf.embedded(unique_namespace()) as client:
        run = await client.start("unit_emb_no_such_workflow", 1, run_id="unit-unknown")
        broker = client.broker
        dead = await broker.get(broker.names.dead_queue, timeout=2)
        assert dead is not None
        reason = dead.headers[REASON_HEADER]
        assert "unit_emb_no_such_workflow" in reason
        assert "no workflow named" in reason
        assert dead.headers[QUEUE_HEADER] == broker.names.runs_queue
        assert decode_message(dead.body) == Activation(run_id=run.run_id, reason="start")
        state = await client.state(run.run_id)
        assert state.status == "created"
        assert counts(await client.events(run.run_id)) == {"run_created": 1}


def _step_message(step_name: str) -> bytes:
    return encode(
        StepMessage(
            run_id="unit-ghost",
            step_id="s1",
            step_name=step_name,
            attempt=1,
            args=add.definition.encode_args((1, 2), {}),
            queue="default",
        )
    )


@pytest.mark.parametrize(
    ("target", "body", "needle"),
    [
        ("steps", b"\xc1 this is not msgpack", "malformed message"),
        ("steps", encode(Activation(run_id="r", reason="x")), "non-step message"),
        ("steps", _step_message("unit_emb_unknown_step"), "unit_emb_unknown_step"),
        ("runs", b"\xc1 garbage", "malformed message"),
        ("runs", _step_message("unit_emb_add"), "non-activation"),
    ],
    ids=["garbage-steps", "activation-on-steps", "unknown-step", "garbage-runs", "step-on-runs"],
)
async def test_bad_messages_are_dead_lettered_and_runs_still_complete(
    target: str, body: bytes, needle: str
) -> None:
    async with lf.embedded(unique_namespace()) as client:
        broker = client.broker
        queue = broker.names.step_queue() if target == "steps" else broker.names.runs_queue
        await broker.publish(queue, body)
        dead = await broker.get(broker.names.dead_queue, timeout=2)
        assert dead is not None
        assert needle in dead.headers[REASON_HEADER]
        assert dead.headers[QUEUE_HEADER] == queue
        assert dead.body == body
        run = await client.start(issue_example, 3)
        assert await run.result(timeout=5) == 6
        assert not await client.store.exists("unit-ghost")


async def test_redelivered_step_message_is_not_run_twice() -> None:
    tag = unique_namespace()
    async with lf.embedded(unique_namespace()) as client:
        run = await client.start(counted_then_blocked, tag)
        with pytest.raises(lf.ResultTimeoutError):
            await run.result(timeout=0.2)
        assert CALLS[tag] == 1
        created = next(e for e in await client.events(run.run_id) if e.corr == "s1")
        duplicate = StepMessage(
            run_id=run.run_id,
            step_id="s1",
            step_name="unit_emb_counted",
            attempt=1,
            args=created.data["args"],
            queue="default",
        )
        before = len(await client.events(run.run_id))
        await client.broker.publish_step(duplicate)
        await asyncio.sleep(0.1)
        assert CALLS[tag] == 1
        assert len(await client.events(run.run_id)) == before
        assert await client.broker.queue_depth(client.broker.names.step_queue()) == 0


# --- a cached instance racing a scheduler that runs other code -------------------------


@lf.step(name="unit_emb_div_a")
async def step_a(x: int) -> int:
    return x + 1


@lf.step(name="unit_emb_div_b")
async def step_b(x: int) -> int:
    return x * 2


@lf.workflow(name="unit_emb_div")
async def a_then_b(x: int) -> int:
    return await step_b(await step_a(x))


async def test_cached_instance_detects_a_step_recorded_by_other_code() -> None:
    """Another scheduler (a different deploy) records s2 as another step just before us.

    Our append of s2 is then a harmless duplicate; the cached instance must still
    notice that the log's s2 is not the step it asked for, like a full replay does,
    rather than take the other step's result.
    """
    async with stack(run_worker=False, run_scheduler=False) as s:
        run_id = "unit-race"
        await s.client.start(a_then_b, 3, run_id=run_id)
        await s.scheduler.replay_run(run_id)  # asks for s1 (unit_emb_div_a)
        await s.store.append(
            run_id,
            [
                NewEvent.of(EventType.STEP_STARTED, "s1", {"worker": "w"}, attempt=1),
                NewEvent.of(EventType.STEP_COMPLETED, "s1", {"result": 4}, attempt=1),
            ],
        )
        foreign_args = step_a.definition.encode_args((100,), {})
        foreign = NewEvent.of(
            EventType.STEP_CREATED,
            "s2",
            {
                "name": "unit_emb_other",
                "queue": "default",
                "args": foreign_args,
            },
            max_size=None,
        )
        real_append = s.store.append

        async def racing_append(rid: str, events: Any, *, based_on: str | None = None) -> Any:
            if any(e.type is EventType.STEP_CREATED and e.corr == "s2" for e in events):
                await real_append(rid, [foreign])
            return await real_append(rid, events, based_on=based_on)

        s.store.append = racing_append  # type: ignore[method-assign]
        await s.scheduler.replay_run(run_id)  # asks for s2 (unit_emb_div_b): a duplicate now
        s.store.append = real_append  # type: ignore[method-assign]
        assert run_id in s.scheduler.cache
        await s.store.append(
            run_id,
            [
                NewEvent.of(EventType.STEP_STARTED, "s2", {"worker": "w"}, attempt=1),
                NewEvent.of(EventType.STEP_COMPLETED, "s2", {"result": 999}, attempt=1),
            ],
        )
        await s.scheduler.replay_run(run_id)  # cache hit
        assert s.scheduler.cache.hits >= 2
        events = await s.client.events(run_id)
        assert events[-1].type is EventType.RUN_FAILED, [e.type.value for e in events]
        error = events[-1].data["error"]
        assert error["type"] == "ledgerflow.ReplayDivergenceError"
        assert "s2" in error["message"]
        assert "unit_emb_other" in error["message"] and "unit_emb_div_b" in error["message"]
        with pytest.raises(lf.WorkflowFailedError) as info:
            await s.client.result(run_id, timeout=1)
        assert info.value.type_name == "ledgerflow.ReplayDivergenceError"
