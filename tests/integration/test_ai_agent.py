"""The example support agent (examples/agent.py) end to end on the real servers.

A real worker process runs its model calls and tool calls; the refund waits for a
person's approval through a hook; and a worker SIGKILLed in the middle of a tool call
is replaced by another that finishes the run without calling the model again.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from ledgerflow.eventlog.events import Event, EventType

import ledgerflow as lf
from examples import agent as example
from ledgerflow.ai import AgentResult
from tests.processes import processes
from tests.servers import Servers

pytestmark = pytest.mark.integration

APP = "examples.agent"
PROMPT = "Order A-17 arrived broken. Can I have my money back?"
MODEL_STEP = "support.model"
TOOL_STEPS = {"lookup_order", "refund", "notify_customer"}


async def until(
    client: lf.Client, run_id: str, check: Callable[[list[Event]], bool], timeout: float = 60
) -> list[Event]:
    deadline = time.monotonic() + timeout
    while True:
        events = await client.events(run_id)
        if check(events):
            return events
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met; log: {[e.type.value for e in events]}")
        await asyncio.sleep(0.05)


async def refund_request(client: lf.Client, run_id: str) -> lf.ai.Approval:
    deadline = time.monotonic() + 60
    while not (requests := await lf.ai.pending_approvals(client, run_id)):
        assert time.monotonic() < deadline, "the refund never asked for approval"
        await asyncio.sleep(0.05)
    (request,) = requests
    return request


async def approve_refund(client: lf.Client, run_id: str) -> lf.ai.Approval:
    request = await refund_request(client, run_id)
    await lf.ai.approve(client, request)
    return request


def steps_by_corr(events: list[Event]) -> dict[str, str]:
    return {e.corr: e.data["name"] for e in events if e.type is EventType.STEP_CREATED}


def per_step(events: list[Event], kind: EventType) -> Counter[str]:
    return Counter(e.corr for e in events if e.type is kind)


def started(events: list[Event], name: str) -> bool:
    names = steps_by_corr(events)
    return any(e.type is EventType.STEP_STARTED and names.get(e.corr) == name for e in events)


def check_conversation(result: AgentResult) -> None:
    assert result.output == "Done: your refund is on its way, and we emailed you the details."
    assert result.turns == 4
    calls = [c.name for m in result.messages for c in m.tool_calls]
    assert calls == ["lookup_order", "refund", "notify_customer"]
    answers = [m.content or "" for m in result.messages if m.role == "tool"]
    (refund,) = [text for text in answers if "refund_id" in text]
    assert '"amount_cents": 4999' in refund


async def read_tokens(servers: Servers, namespace: str, run_id: str, into: list[lf.Chunk]) -> None:
    """Another client, of its own connections, following the run's tokens as they come."""
    async with lf.Client.connect(servers.amqp_url, servers.redis_url, namespace=namespace) as other:
        async for chunk in other.stream(run_id, "tokens"):
            into.append(chunk)


def said(chunks: list[lf.Chunk]) -> str:
    return "".join(str(c.value) for c in chunks)


async def test_the_support_agent_runs_end_to_end_through_real_processes(
    servers: Servers, backends: Any, namespace: str
) -> None:
    client = lf.Client(backends.store, backends.broker)
    ns = backends.names.namespace
    chunks: list[lf.Chunk] = []
    with processes(servers, ns, [["worker", APP, "--with-scheduler"]]):
        run = await client.start(example.support.workflow, PROMPT, run_id=f"{namespace}-agent")
        reader = asyncio.create_task(read_tokens(servers, ns, run.run_id, chunks))
        request = await refund_request(client, run.run_id)
        # Streamed live: what the model said so far reaches the reader while the run waits.
        deadline = time.monotonic() + 30
        while said(chunks) != "Let me look order A-17 up.I am asking for a refund of 49.99 EUR.":
            assert time.monotonic() < deadline, f"tokens read so far: {said(chunks)!r}"
            await asyncio.sleep(0.05)
        assert not reader.done()
        await lf.ai.approve(client, request)
        assert (request.tool, request.arguments) == (
            "refund",
            {"order_id": "A-17", "amount_cents": 4999, "reason": "arrived damaged"},
        )
        result: AgentResult = await run.result(timeout=60)
        await asyncio.wait_for(reader, 30)  # the run's end ends the stream
    check_conversation(result)
    # Every model call's words, in order, one stream for the run; nothing was retried.
    spoken = [m.content for m in result.messages if m.role == "assistant" and m.content]
    assert said(chunks) == "".join(spoken)
    assert not any(c.restarted for c in chunks) and {c.attempt for c in chunks} == {1}
    events = await client.events(run.run_id)
    names = steps_by_corr(events)
    assert {names[c.step] for c in chunks} == {MODEL_STEP}
    assert Counter(names.values()) == Counter({MODEL_STEP: 4, **dict.fromkeys(TOOL_STEPS, 1)})
    assert set(per_step(events, EventType.STEP_COMPLETED).values()) == {1}
    hooks = [e.type for e in events if e.type.value.startswith("hook_")]
    assert hooks == [EventType.HOOK_CREATED, EventType.HOOK_RECEIVED, EventType.HOOK_DISPOSED]
    # The recorded run replays to the same result without asking for anything.
    replayed = lf.testing.replay(events, example.support.workflow, run_id=run.run_id)
    assert replayed.outcome == lf.testing.Completed(result) and replayed.pending == ()


async def test_a_worker_killed_in_a_tool_call_never_makes_the_model_answer_twice(
    servers: Servers, backends: Any, scheduling: lf.Client, namespace: str
) -> None:
    ns = backends.names.namespace
    slow = {"SUPPORT_LOOKUP_SECONDS": "5"}  # the order system is slow: time to crash in it
    worker = ["worker", APP, "--concurrency", "4"]
    chunks: list[lf.Chunk] = []
    with processes(servers, ns, [worker], env=slow) as (victim,):
        run = await scheduling.start(example.support.workflow, PROMPT, run_id=f"{namespace}-kill")
        reader = asyncio.create_task(read_tokens(servers, ns, run.run_id, chunks))
        events = await until(scheduling, run.run_id, lambda ev: started(ev, "lookup_order"))
        assert not per_step(events, EventType.STEP_COMPLETED).keys() - {"s1"}  # mid-call
        victim.send_signal(signal.SIGKILL)
        await asyncio.to_thread(victim.wait, 10)
        with processes(servers, ns, [worker]):
            await approve_refund(scheduling, run.run_id)
            result: AgentResult = await run.result(timeout=90)
            await asyncio.wait_for(reader, 30)
    check_conversation(result)
    # The reader saw each model call's words once: none was made again.
    spoken = [m.content for m in result.messages if m.role == "assistant" and m.content]
    assert said(chunks) == "".join(spoken) and not any(c.restarted for c in chunks)
    events = await scheduling.events(run.run_id)
    names = steps_by_corr(events)
    starts = per_step(events, EventType.STEP_STARTED)
    completions = per_step(events, EventType.STEP_COMPLETED)
    models = [corr for corr, name in names.items() if name == MODEL_STEP]
    tools = {name: corr for corr, name in names.items() if name in TOOL_STEPS}
    assert len(models) == 4 and tools.keys() == TOOL_STEPS
    # Each model call ran once: none was asked again after the crash, its reply was replayed.
    assert {corr: starts[corr] for corr in models} == dict.fromkeys(models, 1)
    # Every step's outcome is recorded once; the killed tool call ran again, elsewhere.
    assert completions == Counter(dict.fromkeys(names, 1))
    lookup = tools["lookup_order"]
    assert starts[lookup] == 2
    attempts = [e for e in events if e.type is EventType.STEP_STARTED and e.corr == lookup]
    assert [e.data["attempt"] for e in attempts] == [1, 2]
    assert attempts[0].data["worker"] != attempts[1].data["worker"]
    assert starts[tools["refund"]] == starts[tools["notify_customer"]] == 1
