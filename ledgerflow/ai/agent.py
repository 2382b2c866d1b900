"""The agent: a workflow whose loop calls a model step, then tool steps, until an answer.

Every model call and every tool call is a step, so each is retried, timed out and
recorded, and a crash never repeats one whose outcome is in the log: a replay hands
the loop the recorded reply. The loop itself is workflow code (deterministic, no
I/O); the conversation is what flows through the log. The model object never does:
each agent registers a model step of its own (``<name>.model``) that finds the model
in the worker's process, where the application module built it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re
from collections.abc import Sequence
from typing import Any, Final

from ledgerflow.eventlog import codec
from ledgerflow.eventlog.errors import (
    ConfigurationError,
    FatalError,
    InvalidArgumentError,
    MaxTurnsError,
    ModelError,
    StepFailedError,
    WaitTimeout,
)
from ledgerflow.eventlog.names import DEFAULT_STEP_QUEUE
from ledgerflow.eventlog.text import clip
from ledgerflow.scheduler.durable import create_hook, wait_for
from ledgerflow.scheduler.registry import WorkflowFunction, workflow
from ledgerflow.worker.registry import StepFunction, step
from ledgerflow.worker.retry import RetryPolicy

from .approval import Decision, read_decision, request_metadata
from .messages import AgentResult, Message, ModelReply, ToolCall, Usage
from .model import Model, ToolSpec
from .streaming import token_sink
from .tools import Tool, tool

AGENT_NAME: Final = re.compile(r"^[A-Za-z0-9_.:-]{1,100}$")
MAX_TURNS_CEILING: Final = 1000
DEFAULT_MODEL_TIMEOUT: Final = 600.0
"""Seconds one model call may take, streaming included, before the attempt is retried."""
DEFAULT_MODEL_RETRY: Final = RetryPolicy(
    max_attempts=4, initial=2.0, backoff=2.0, max_interval=60.0
)

_agents: dict[str, Agent] = {}


class Agent:
    """A model with tools and instructions, run durably as the workflow ``agent.workflow``.

    ``client.start(agent.workflow, "prompt")`` starts a run; its result is an
    ``AgentResult``. Inside another workflow, ``await agent.run("prompt")`` runs the
    same loop inline (its steps in that run's log), and ``await agent.workflow(...)``
    runs it as a child run.

    - ``tools``: steps (described from their signature and docstring) or ``lf.ai.tool(...)``.
    - ``max_turns``: model calls per run; one more would raise ``lf.MaxTurnsError``.
    - ``stream``: the run's output stream the model's tokens are written to (None: none).
    - ``retention``, ``timeout``: the workflow's (``@lf.workflow``): how long a finished
      run is kept, and how long a run may take in all, approvals waited for included.
    - ``model_timeout``, ``model_retry``, ``model_queue``: the model step's options
      (``@lf.step``'s ``timeout``, ``retry``, ``queue``): a queue of its own lets a
      pool of workers sized for the provider's rate limit take every model call.
    """

    def __init__(
        self,
        name: str,
        *,
        model: Model,
        tools: Sequence[StepFunction[..., Any] | Tool] = (),
        instructions: str = "",
        max_turns: int = 10,
        stream: str | None = "tokens",
        model_timeout: float = DEFAULT_MODEL_TIMEOUT,
        model_retry: RetryPolicy | None = DEFAULT_MODEL_RETRY,
        model_queue: str = DEFAULT_STEP_QUEUE,
        retention: dt.timedelta | None = None,
        timeout: dt.timedelta | float | None = None,
    ) -> None:
        if not isinstance(name, str) or not AGENT_NAME.match(name):
            raise ConfigurationError(
                f"agent name {name!r}: 1-100 letters, digits and '_ . : -' (it names a workflow)"
            )
        if name in _agents:
            raise ConfigurationError(f"an agent named {name!r} already exists in this process")
        if not isinstance(model, Model):
            raise ConfigurationError(
                f"agent {name!r}: model must have `async def complete(messages, tools, *, "
                f"on_token)`, got {type(model).__name__}"
            )
        if not isinstance(max_turns, int) or not 1 <= max_turns <= MAX_TURNS_CEILING:
            raise ConfigurationError(
                f"agent {name!r}: max_turns must be a whole number from 1 to {MAX_TURNS_CEILING}"
            )
        if not isinstance(instructions, str):
            raise ConfigurationError(f"agent {name!r}: instructions must be text")
        self.name = name
        self.model = model
        self.instructions = instructions
        self.max_turns = max_turns
        self.stream = stream
        self.tools = [t if isinstance(t, Tool) else tool(t) for t in tools]
        self._tools = {t.name: t for t in self.tools}
        if len(self._tools) != len(self.tools):
            raise ConfigurationError(f"agent {name!r}: two tools share a name; pass name=...")
        self.tool_specs: list[ToolSpec] = [t.spec for t in self.tools]
        self.model_step: StepFunction[..., ModelReply] = step(
            name=f"{name}.model",
            queue=model_queue,
            timeout=model_timeout,
            retry=model_retry,
            max_payload=codec.MAX_PAYLOAD,
        )(self._model_call())
        self.workflow: WorkflowFunction[..., AgentResult] = workflow(
            name=name, retention=retention, timeout=timeout
        )(self._workflow())
        _agents[name] = self

    def __repr__(self) -> str:
        return f"Agent({self.name!r}, tools={[t.name for t in self.tools]})"

    # --- the steps and the workflow it registers --------------------------------------------

    def _model_call(self) -> Any:
        agent = self

        async def model_call(*messages: Message) -> ModelReply:
            """One model call, on a worker: the conversation so far in, the next reply out.

            Each message is an argument of its own, so a large one (a long tool result)
            is stored out of line once and referred to by digest in every later call,
            instead of being copied into the log with each turn.
            """
            return await agent._complete(messages)

        model_call.__qualname__ = f"Agent[{self.name}].model_call"
        return model_call

    def _workflow(self) -> Any:
        agent = self

        async def run_agent(prompt: str, history: list[Message] | None = None) -> AgentResult:
            return await agent.run(prompt, history or ())

        run_agent.__qualname__ = f"Agent[{self.name}].run"
        return run_agent

    async def _complete(self, messages: Sequence[Any]) -> ModelReply:
        if not messages or not all(isinstance(m, Message) for m in messages):
            raise FatalError(f"agent {self.name!r}: a model call's arguments must be Messages")
        async with token_sink(self.stream) as on_token:
            reply = await self.model.complete(list(messages), self.tool_specs, on_token=on_token)
        if not isinstance(reply, ModelReply):
            raise ModelError(
                f"agent {self.name!r}: {type(self.model).__name__}.complete returned "
                f"{type(reply).__name__}, not a ModelReply"
            )
        return reply

    # --- the loop (workflow code) -------------------------------------------------------------

    async def run(self, prompt: str, history: Sequence[Message] = ()) -> AgentResult:
        """The agent loop, in workflow code: model, tools, model ... until an answer.

        ``history`` is an earlier conversation to go on with (an ``AgentResult``'s
        ``messages``); the instructions are put first unless it starts with a system
        message of its own.
        """
        if not isinstance(prompt, str):
            raise InvalidArgumentError(f"agent {self.name!r}: the prompt must be text")
        if not isinstance(history, list | tuple) or not all(
            isinstance(m, Message) for m in history
        ):
            raise InvalidArgumentError(f"agent {self.name!r}: history must be a list of Messages")
        conversation: list[Message] = []
        if self.instructions and not (history and history[0].role == "system"):
            conversation.append(Message.system(self.instructions))
        conversation.extend(history)
        conversation.append(Message.user(prompt))
        usage = Usage()
        for turn in range(1, self.max_turns + 1):
            reply = await self.model_step(*conversation)
            usage += reply.usage
            conversation.append(reply.message)
            calls = reply.message.tool_calls
            if not calls:
                return AgentResult(reply.message.content or "", tuple(conversation), turn, usage)
            conversation.extend(await asyncio.gather(*(self._answer(c) for c in calls)))
        raise MaxTurnsError(
            f"agent {self.name!r} made {self.max_turns} model calls (max_turns) without a "
            "final answer"
        )

    async def _answer(self, call: ToolCall) -> Message:
        """The tool message answering one call: its result, or what went wrong, for the model."""
        chosen = self._tools.get(call.name)
        if chosen is None:
            known = ", ".join(self._tools) or "none"
            return Message.tool(
                call.id, f"error: there is no tool {clip(call.name, 100)!r} (tools: {known})"
            )
        arguments, problem = chosen.check_arguments(call.arguments)
        if problem is not None:
            return Message.tool(call.id, f"error: {problem}")
        if chosen.approval:
            decision = await self._approval(chosen, call, arguments)
            if not decision.approved:
                why = f": {decision.reason}" if decision.reason else ""
                return Message.tool(call.id, f"rejected: a person did not approve this call{why}")
        try:
            result = await chosen.step(**arguments)
        except StepFailedError as exc:
            return Message.tool(
                call.id, f"error: {chosen.name} failed: {exc.type_name}: {exc.message}"
            )
        return Message.tool(call.id, chosen.render(result))

    async def _approval(self, chosen: Tool, call: ToolCall, arguments: dict[str, Any]) -> Decision:
        """Wait, durably, for a person to answer this call's hook; then dispose of it."""
        metadata = request_metadata(self.name, chosen.name, arguments, call.id)
        async with create_hook(metadata=metadata) as hook:
            if chosen.approval_timeout is None:
                return read_decision(await hook)
            try:
                payload = await wait_for(hook.next(), chosen.approval_timeout)
            except WaitTimeout:
                return Decision(False, f"no decision within {chosen.approval_timeout:g} s")
            return read_decision(payload)
