"""The agent loop on the in-memory backends: answers, tools, approvals, limits, replay.

The integration tests (tests/integration/test_ai_agent.py) run the example agent on
the real servers and crash its worker; these cover the loop's every path, fast.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from ledgerflow.eventlog import codec
from ledgerflow.eventlog.blobref import BlobRef
from ledgerflow.eventlog.events import EventType

import ledgerflow as lf
from ledgerflow.ai import Agent, AgentResult, Message, ModelReply, ScriptedModel, ToolCall, tool

from .helpers import unique_namespace

ROOT = Path(__file__).resolve().parents[2]


@lf.step(name="unit_ai_add")
async def add(a: int, b: int) -> int:
    """Add two numbers."""
    return a + b


@lf.step(name="unit_ai_broken", retry=lf.RetryPolicy(max_attempts=1))
async def broken(order_id: str) -> str:
    """Always fails."""
    raise lf.FatalError(f"order system down for {order_id}")


@lf.step(name="unit_ai_charge")
async def charge(amount: int) -> str:
    """Charge a card."""
    return f"charged {amount}"


def echo_tools(conversation: Sequence[Message]) -> str:
    """The final answer: what the tools answered last turn, one per line."""
    answers = []
    for message in reversed(conversation):
        if message.role != "tool":
            break
        answers.append(message.content or "")
    return "\n".join(reversed(answers))


adder = Agent(
    "unit_ai_adder",
    model=ScriptedModel([ToolCall.to("add", a=1, b=2), echo_tools]),
    tools=[add],
    instructions="Use the tools.",
)
looper = Agent(
    "unit_ai_looper",
    model=ScriptedModel(lambda conversation: ToolCall.to("add", a=1, b=1)),
    tools=[add],
    max_turns=3,
)
confused = Agent(
    "unit_ai_confused",
    model=ScriptedModel(
        [
            [
                ToolCall.to("nope"),
                ToolCall.to("add", a="one", b=2),
                ToolCall.to("add", a=1),
                ToolCall.to("broken", order_id="A-1"),
            ],
            echo_tools,
        ]
    ),
    tools=[add, broken],
)
guarded = Agent(
    "unit_ai_guarded",
    model=ScriptedModel([ToolCall.to("charge", amount=700), echo_tools]),
    tools=[tool(charge, approval=True)],
)


@lf.step(name="unit_ai_report")
async def report(size: int) -> str:
    """A long report."""
    return "r" * size


reporter = Agent(
    "unit_ai_reporter",
    model=ScriptedModel([ToolCall.to("report", size=100_000), ToolCall.to("add", a=1, b=1), "ok"]),
    tools=[tool(report, max_result_chars=200_000), add],
)


class Stumbling:
    """Streams two words and fails its first attempt; the second attempt says it all."""

    async def complete(
        self, messages: Sequence[Message], tools: Any, *, on_token: Any = None
    ) -> ModelReply:
        assert on_token is not None
        for word in ("Hello", " there"):
            await on_token(word)
        if lf.step_context().attempt == 1:
            raise lf.ModelUnavailableError("overloaded", retry_after=0)
        await on_token(" again.")
        return ModelReply(Message.assistant("Hello there again."))


stumbling = Agent("unit_ai_stumbling", model=Stumbling())
silent = Agent("unit_ai_silent", model=ScriptedModel(["Not streamed."]), stream=None)


@lf.step(name="unit_ai_closer")
async def closer() -> str:
    """Ends the tokens stream."""
    async with lf.stream("tokens") as out:
        await out.write("closed by a tool")
    return "closed"


closing = Agent(
    "unit_ai_closing",
    model=ScriptedModel([["Closing.", ToolCall.to("closer")], "Still answered."]),
    tools=[closer],
)
forgotten = Agent(
    "unit_ai_forgotten",
    model=ScriptedModel([ToolCall.to("charge", amount=1), echo_tools]),
    tools=[tool(charge, approval=True)],
    timeout=0.5,
)
hurried = Agent(
    "unit_ai_hurried",
    model=ScriptedModel([ToolCall.to("charge", amount=1), echo_tools]),
    tools=[tool(charge, approval=True, approval_timeout=0.3)],
)


@lf.workflow(name="unit_ai_inline")
async def inline_and_child(question: str) -> list[str]:
    """An agent's loop inside another workflow, then the same agent as a child run."""
    here = await adder.run(question)
    child = await adder.workflow(question)
    return [here.output, child.output]


@pytest.fixture
async def client() -> AsyncIterator[lf.Client]:
    async with lf.embedded(unique_namespace()) as running:
        yield running


async def approvals(client: lf.Client, run_id: str) -> list[lf.ai.Approval]:
    for _ in range(200):
        found = await lf.ai.pending_approvals(client, run_id)
        if found:
            return found
        await asyncio.sleep(0.02)
    raise AssertionError(f"{run_id} never asked for an approval")


async def test_a_tool_call_then_an_answer(client: lf.Client) -> None:
    run = await client.start(adder.workflow, "What is 1 + 2?")
    result: AgentResult = await run.result(timeout=10)
    assert result.output == "3"
    assert result.turns == 2
    assert [m.role for m in result.messages] == [
        "system",
        "user",
        "assistant",
        "tool",
        "assistant",
    ]
    assert result.messages[3] == Message.tool("call_0_0", "3")
    events = await client.events(run.run_id)
    steps = [e.data["name"] for e in events if e.type is EventType.STEP_CREATED]
    assert steps == ["unit_ai_adder.model", "unit_ai_add", "unit_ai_adder.model"]
    # The recorded run replays to the same result, asking for nothing (no model call).
    replayed = lf.testing.replay(events, adder.workflow, run_id=run.run_id)
    assert replayed.outcome == lf.testing.Completed(result)
    assert replayed.pending == ()


async def test_a_conversation_goes_on_from_its_history(client: lf.Client) -> None:
    first: AgentResult = await (await client.start(adder.workflow, "1 + 2?")).result(timeout=10)
    run = await client.start(adder.workflow, "And again?", list(first.messages))
    second: AgentResult = await run.result(timeout=10)
    assert [m.role for m in second.messages].count("system") == 1
    assert second.messages[: len(first.messages)] == first.messages
    assert second.messages[len(first.messages)] == Message.user("And again?")
    # The script starts over for the new prompt; its call ids stay unique in the conversation.
    assert second.output == "3"
    assert second.messages[-3].tool_calls[0].id == "call_2_0"


async def test_an_agent_inside_another_workflow_inline_or_as_a_child(client: lf.Client) -> None:
    run = await client.start(inline_and_child, "1 + 2?")
    assert await run.result(timeout=10) == ["3", "3"]
    events = await client.events(run.run_id)
    steps = [e.data["name"] for e in events if e.type is EventType.STEP_CREATED]
    assert steps == [
        "unit_ai_adder.model",
        "unit_ai_add",
        "unit_ai_adder.model",
        "workflow:unit_ai_adder",
    ]


async def test_a_long_message_is_stored_once_and_referred_to_by_later_model_calls(
    client: lf.Client,
) -> None:
    run = await client.start(reporter.workflow, "report")
    result: AgentResult = await run.result(timeout=10)
    assert result.output == "ok" and len(result.messages[2].content or "") == 100_000
    events = await client.events(run.run_id)
    calls = [
        codec.decode(e.data["args"])[0]
        for e in events
        if e.type is EventType.STEP_CREATED and e.data["name"] == "unit_ai_reporter.model"
    ]
    assert [len(args) for args in calls] == [1, 3, 5]  # one argument per message
    assert all(isinstance(m, Message) for m in calls[0] + calls[1][:2])
    long = calls[1][2]  # the report's answer: a reference, the same in the next call
    assert isinstance(long, BlobRef) and calls[2][2] == long
    assert all(len(e.data.get("args", b"")) < 10_000 for e in events)


async def test_a_history_that_is_not_messages_fails_the_run(client: lf.Client) -> None:
    for history in (["hello"], {"role": "user"}, "hello"):
        run = await client.start(adder.workflow, "hi", history)
        with pytest.raises(lf.WorkflowFailedError, match="history must be a list of Messages"):
            await run.result(timeout=10)


async def test_max_turns_fails_the_run_saying_so(client: lf.Client) -> None:
    run = await client.start(looper.workflow, "loop")
    with pytest.raises(lf.WorkflowFailedError) as failed:
        await run.result(timeout=10)
    assert failed.value.type_name == "ledgerflow.MaxTurnsError"
    assert "made 3 model calls (max_turns)" in failed.value.message
    events = await client.events(run.run_id)
    models = [
        e for e in events if e.type is EventType.STEP_CREATED and e.data["name"].endswith(".model")
    ]
    assert len(models) == 3


async def test_unknown_tools_bad_arguments_and_failures_are_told_to_the_model(
    client: lf.Client,
) -> None:
    run = await client.start(confused.workflow, "go")
    result: AgentResult = await run.result(timeout=10)
    assert result.output.splitlines() == [
        "error: there is no tool 'nope' (tools: add, broken)",
        'error: argument a = "one" is not an integer',
        "error: missing argument(s) b; add takes (a: an integer, b: an integer)",
        "error: broken failed: ledgerflow.FatalError: order system down for A-1",
    ]
    events = await client.events(run.run_id)
    tools_run = [e.data["name"] for e in events if e.type is EventType.STEP_CREATED]
    assert tools_run.count("unit_ai_add") == 0  # nothing that did not fit reached a step


async def test_an_approved_call_runs_and_the_hook_is_disposed(client: lf.Client) -> None:
    run = await client.start(guarded.workflow, "charge me")
    (request,) = await approvals(client, run.run_id)
    assert (request.agent, request.tool, request.arguments) == (
        "unit_ai_guarded",
        "charge",
        {"amount": 700},
    )
    assert request.tool_call_id == "call_0_0" and request.run_id == run.run_id
    events = await client.events(run.run_id)
    assert not any(
        e.type is EventType.STEP_CREATED and e.data["name"] == "unit_ai_charge" for e in events
    )
    assert await lf.ai.approve(client, request) == run.run_id
    result: AgentResult = await run.result(timeout=10)
    assert result.output == "charged 700"
    assert await lf.ai.pending_approvals(client, run.run_id) == []
    with pytest.raises(lf.HookNotFoundError):
        await lf.ai.approve(client, request)  # answered once, and disposed


async def test_a_rejection_is_what_the_model_is_told(client: lf.Client) -> None:
    run = await client.start(guarded.workflow, "charge me")
    (request,) = await approvals(client, run.run_id)
    await lf.ai.reject(client, request, "too much")
    result: AgentResult = await run.result(timeout=10)
    assert result.output == "rejected: a person did not approve this call: too much"
    events = await client.events(run.run_id)
    assert not any(
        e.data.get("name") == "unit_ai_charge" for e in events if e.type is EventType.STEP_CREATED
    )


async def test_a_malformed_answer_is_a_rejection(client: lf.Client) -> None:
    run = await client.start(guarded.workflow, "charge me")
    (request,) = await approvals(client, run.run_id)
    await client.resume_hook(request.token, {"approved": "yes"})
    result: AgentResult = await run.result(timeout=10)
    assert result.output.startswith("rejected: a person did not approve this call: the answer was")


async def test_no_decision_in_time_is_a_rejection(client: lf.Client) -> None:
    run = await client.start(hurried.workflow, "charge me")
    result: AgentResult = await run.result(timeout=10)
    assert result.output == (
        "rejected: a person did not approve this call: no decision within 0.3 s"
    )


async def test_an_agents_timeout_ends_a_run_nobody_answers(client: lf.Client) -> None:
    run = await client.start(forgotten.workflow, "charge me")
    with pytest.raises(lf.WorkflowFailedError) as failed:
        await run.result(timeout=10)
    assert failed.value.type_name == "ledgerflow.WorkflowTimeoutError"
    assert await lf.ai.pending_approvals(client, run.run_id) == []  # its hook went with it


# --- tokens -------------------------------------------------------------------------------


async def read_all(client: lf.Client, run_id: str) -> list[lf.Chunk]:
    return [chunk async for chunk in client.stream(run_id, "tokens")]


async def test_tokens_are_streamed_as_the_model_writes_them(client: lf.Client) -> None:
    run = await client.start(adder.workflow, "1 + 2?")
    reader = asyncio.create_task(read_all(client, run.run_id))
    result: AgentResult = await run.result(timeout=10)
    chunks = await asyncio.wait_for(reader, 10)  # the run's end ends the stream
    assert [c.value for c in chunks] == ["3"]
    model_steps = [
        e.corr
        for e in await client.events(run.run_id)
        if e.type is EventType.STEP_CREATED and e.data["name"] == "unit_ai_adder.model"
    ]
    assert [c.step for c in chunks] == [model_steps[-1]] and result.output == "3"


async def test_a_retried_model_call_says_so_in_its_first_chunk(client: lf.Client) -> None:
    run = await client.start(stumbling.workflow, "hi")
    result: AgentResult = await run.result(timeout=10)
    chunks = await read_all(client, run.run_id)
    assert [(c.value, c.attempt, c.restarted) for c in chunks] == [
        ("Hello", 1, False),
        (" there", 1, False),
        ("Hello", 2, True),
        (" there", 2, False),
        (" again.", 2, False),
    ]
    assert result.output == "Hello there again."


async def test_a_stream_that_refuses_tokens_does_not_cost_the_model_call(
    client: lf.Client,
) -> None:
    run = await client.start(closing.workflow, "close it")
    result: AgentResult = await run.result(timeout=10)
    assert result.output == "Still answered."
    chunks = await read_all(client, run.run_id)
    assert [c.value for c in chunks] == ["Closing.", "closed by a tool"]


async def test_an_agent_without_a_stream_writes_none(client: lf.Client) -> None:
    run = await client.start(silent.workflow, "hi")
    assert (await run.result(timeout=10)).output == "Not streamed."
    assert await client.streams(run.run_id) == []


# --- the model step and the agent's configuration ---------------------------------------


async def test_the_model_step_checks_its_arguments_and_the_models_reply() -> None:
    with pytest.raises(lf.FatalError, match="must be Messages"):
        await adder.model_step("not a message")

    class Chatty:
        async def complete(self, messages: Any, tools: Any, *, on_token: Any = None) -> Any:
            return "just text"

    odd = Agent("unit_ai_odd", model=Chatty())
    with pytest.raises(lf.ModelError, match="returned str, not a ModelReply"):
        await odd.model_step(Message.user("hi"))


def test_agents_are_checked_where_they_are_built() -> None:
    model = ScriptedModel(["ok"])
    with pytest.raises(lf.ConfigurationError, match="already exists"):
        Agent("unit_ai_adder", model=model)
    with pytest.raises(lf.ConfigurationError, match="agent name"):
        Agent("no spaces", model=model)
    with pytest.raises(lf.ConfigurationError, match="max_turns"):
        Agent("unit_ai_zero", model=model, max_turns=0)
    with pytest.raises(lf.ConfigurationError, match="model must have"):
        Agent("unit_ai_nomodel", model=object())  # type: ignore[arg-type]
    with pytest.raises(lf.ConfigurationError, match="share a name"):
        Agent("unit_ai_twice", model=model, tools=[add, tool(charge, name="add")])


# --- messages and the scripted model ------------------------------------------------------


def test_the_example_runs_by_hand_in_memory() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "examples.agent", "--embedded", "--reject"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "  (s1) Let me look order A-17 up." in lines
    assert any(line.startswith("approval asked: refund(") for line in lines)
    assert lines[-1] == "3 model calls, 144 tokens"
    assert "  assistant: I am sorry: I could not refund this order." in done.stdout


def test_messages_refuse_what_no_conversation_holds() -> None:
    cases: list[tuple[Callable[[], object], str]] = [
        (lambda: Message("robot", "hi"), "role must be one of"),  # type: ignore[arg-type]
        (lambda: Message("user", 5), "content must be"),  # type: ignore[arg-type]
        (lambda: Message("user", "x", (ToolCall("1", "f"),)), "only an assistant's"),
        (lambda: Message("tool", "x"), "answers a tool_call_id"),
        (lambda: ToolCall("1", "f", {1: 2}), "string keys"),  # type: ignore[dict-item]
        (lambda: ModelReply(Message.user("x")), "an assistant's Message"),
    ]
    for build, problem in cases:
        with pytest.raises(lf.InvalidArgumentError, match=problem):
            build()


def test_a_forged_message_in_a_payload_does_not_decode() -> None:
    good = codec.encode(Message.user("hi"))
    assert codec.decode(good) == Message.user("hi")
    forged = good.replace(b"user", b"root")
    with pytest.raises(lf.SerializationError, match="role must be one of"):
        codec.decode(forged)
    result = codec.encode(AgentResult("ok", (Message.user("hi"),), 1))
    assert codec.decode(result).output == "ok"
    forged = result.replace(b"\xa2ok", b"\xcd\x00\x07")  # the text "ok" as the number 7
    with pytest.raises(lf.SerializationError, match="output must be a string"):
        codec.decode(forged)
    calls = codec.decode(codec.encode(Message.assistant(None, (ToolCall("1", "f", {"a": 1}),))))
    assert calls.tool_calls == (ToolCall("1", "f", {"a": 1}),)


async def test_the_scripted_model_answers_by_turn_and_streams_words() -> None:
    model = ScriptedModel(
        [[ToolCall.to("f", x=1), ToolCall("mine", "g")], "Hello there, world."],
        token_delay=0.001,
    )
    first = await model.complete([Message.user("hi")], [])
    assert [(c.id, c.name) for c in first.message.tool_calls] == [("call_0_0", "f"), ("mine", "g")]
    assert first.finish_reason == "tool_calls"
    streamed: list[str] = []

    async def on_token(text: str) -> None:
        streamed.append(text)

    conversation = [Message.user("hi"), first.message]
    again = await model.complete(conversation, [], on_token=on_token)
    assert streamed == ["Hello", " there,", " world."]
    assert again.message.content == "Hello there, world."
    assert again.usage.completion_tokens == 3
    # The same conversation gets the same answer: the turn is read from it, not counted.
    assert await model.complete(conversation, []) == again
    assert len(model.calls) == 3
    with pytest.raises(lf.ModelRefusedError, match="has 2 turn"):
        await model.complete([*conversation, Message.assistant("x")], [])
