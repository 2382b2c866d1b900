"""The conversation as the log records it: messages, tool calls, model replies.

These are the values that travel between the agent's workflow code and its model
step, so they are registered with ``@lf.serializable`` under stable names (a class
may move without breaking runs in flight) and check their fields when built: a
value decoded from a log or a queue is hostile until it has been through here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final, Literal

from ledgerflow.eventlog.codec import serializable
from ledgerflow.eventlog.errors import InvalidArgumentError

Role = Literal["system", "user", "assistant", "tool"]
ROLES: Final = frozenset({"system", "user", "assistant", "tool"})


@serializable(name="ledgerflow.ai.ToolCall")
@dataclass(frozen=True)
class ToolCall:
    """The model asking for one tool: ``name(**arguments)``, answered under ``id``."""

    id: str
    name: str
    arguments: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check(isinstance(self.id, str), "ToolCall.id must be a string")
        _check(isinstance(self.name, str) and bool(self.name), "ToolCall.name must be text")
        _check(
            isinstance(self.arguments, dict) and all(isinstance(k, str) for k in self.arguments),
            "ToolCall.arguments must be a dict with string keys",
        )

    @classmethod
    def to(cls, name: str, /, **arguments: Any) -> ToolCall:
        """A call for a scripted model; ``ScriptedModel`` gives it an id (``call_<turn>_<n>``)."""
        return cls(id="", name=name, arguments=arguments)


@serializable(name="ledgerflow.ai.Message")
@dataclass(frozen=True)
class Message:
    """One message of a conversation, in the chat-completions shape every provider shares.

    ``tool_calls`` only on an assistant's message; ``tool_call_id`` only on a tool's
    (the result of that call).
    """

    role: Role
    content: str | None = None
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None

    def __post_init__(self) -> None:
        _check(self.role in ROLES, f"Message.role must be one of {sorted(ROLES)}")
        _check(
            self.content is None or isinstance(self.content, str),
            "Message.content must be a string or None",
        )
        calls = self.tool_calls
        _check(
            isinstance(calls, tuple | list) and all(isinstance(c, ToolCall) for c in calls),
            "Message.tool_calls must be ToolCalls",
        )
        if isinstance(calls, list):  # frozen: a list that came over the wire becomes a tuple
            object.__setattr__(self, "tool_calls", tuple(calls))
        _check(not calls or self.role == "assistant", "only an assistant's message has tool_calls")
        _check(
            self.tool_call_id is None or isinstance(self.tool_call_id, str),
            "Message.tool_call_id must be a string or None",
        )
        _check(
            (self.role == "tool") == (self.tool_call_id is not None),
            "a tool's message, and only a tool's, answers a tool_call_id",
        )

    @classmethod
    def system(cls, content: str) -> Message:
        return cls("system", content)

    @classmethod
    def user(cls, content: str) -> Message:
        return cls("user", content)

    @classmethod
    def assistant(cls, content: str | None, tool_calls: tuple[ToolCall, ...] = ()) -> Message:
        return cls("assistant", content, tuple(tool_calls))

    @classmethod
    def tool(cls, tool_call_id: str, content: str) -> Message:
        return cls("tool", content, tool_call_id=tool_call_id)


@serializable(name="ledgerflow.ai.Usage")
@dataclass(frozen=True)
class Usage:
    """Tokens a call (or a whole run, summed) cost, as the provider counted them."""

    prompt_tokens: int = 0
    completion_tokens: int = 0

    def __post_init__(self) -> None:
        for name in ("prompt_tokens", "completion_tokens"):
            value = getattr(self, name)
            _check(
                isinstance(value, int) and not isinstance(value, bool) and value >= 0,
                f"Usage.{name} must be a whole number of at least 0",
            )

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.prompt_tokens + other.prompt_tokens,
            self.completion_tokens + other.completion_tokens,
        )


@serializable(name="ledgerflow.ai.ModelReply")
@dataclass(frozen=True)
class ModelReply:
    """What one model call answered: an assistant message, why it stopped, what it cost."""

    message: Message
    finish_reason: str = "stop"
    usage: Usage = field(default_factory=Usage)

    def __post_init__(self) -> None:
        _check(
            isinstance(self.message, Message) and self.message.role == "assistant",
            "ModelReply.message must be an assistant's Message",
        )
        _check(isinstance(self.finish_reason, str), "ModelReply.finish_reason must be a string")
        _check(isinstance(self.usage, Usage), "ModelReply.usage must be a Usage")


@serializable(name="ledgerflow.ai.AgentResult")
@dataclass(frozen=True)
class AgentResult:
    """How an agent's run ended: its answer, the whole conversation, what it cost."""

    output: str
    messages: tuple[Message, ...]
    turns: int
    usage: Usage = field(default_factory=Usage)

    def __post_init__(self) -> None:
        _check(isinstance(self.output, str), "AgentResult.output must be a string")
        messages = self.messages
        _check(
            isinstance(messages, tuple | list) and all(isinstance(m, Message) for m in messages),
            "AgentResult.messages must be Messages",
        )
        if isinstance(messages, list):
            object.__setattr__(self, "messages", tuple(messages))
        _check(
            isinstance(self.turns, int) and not isinstance(self.turns, bool) and self.turns >= 0,
            "AgentResult.turns must be a whole number of at least 0",
        )
        _check(isinstance(self.usage, Usage), "AgentResult.usage must be a Usage")


def _check(ok: bool, problem: str) -> None:
    if not ok:
        raise InvalidArgumentError(problem)
