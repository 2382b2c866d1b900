"""What an agent needs from a language model: one call, a conversation in, a reply out.

Small on purpose: the agent loop, the log and the retries are ledgerflow's; a model
only answers. ``ScriptedModel`` (tests, examples) and ``OpenAIChatModel`` (any
OpenAI-compatible chat-completions API) implement it; so can anything else.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from .messages import Message, ModelReply

TokenCallback = Callable[[str], Awaitable[None]]
"""Called with each piece of the reply's text as the model produces it."""


@dataclass(frozen=True)
class ToolSpec:
    """A tool as the model is told about it: a name, what it does, a JSON schema of its
    parameters (``{"type": "object", "properties": ..., "required": ...}``)."""

    name: str
    description: str
    parameters: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Model(Protocol):
    """A language model: given the conversation and the tools, the next assistant message.

    Called inside the agent's model step, on a worker: it may do I/O, take its time,
    and raise (``lf.ModelUnavailableError`` to be retried after a delay,
    ``lf.ModelRefusedError`` never to be). ``on_token``, when given, is awaited with
    each piece of text as it is produced; the reply still carries the whole text.
    """

    async def complete(
        self,
        messages: Sequence[Message],
        tools: Sequence[ToolSpec],
        *,
        on_token: TokenCallback | None = None,
    ) -> ModelReply: ...
