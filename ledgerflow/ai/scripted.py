"""A model that answers from a script: agents tested and demonstrated without a network.

The turn it answers is read from the conversation (how many assistant messages
follow the latest user message), never from a counter of its own: a worker that
crashed and came back, or another worker taking over, gives the same answer to the
same conversation, as a deterministic model must.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Sequence
from typing import TypeAlias

from ledgerflow.eventlog.errors import InvalidArgumentError, ModelRefusedError

from .messages import Message, ModelReply, ToolCall, Usage
from .model import TokenCallback, ToolSpec

Turn: TypeAlias = str | ToolCall | Sequence[str | ToolCall] | ModelReply
"""One scripted answer: text (the final answer), one tool call, several (text among them is
said first), or a whole reply."""

TurnFunction: TypeAlias = Callable[[Sequence[Message]], Turn]
Script: TypeAlias = Sequence[Turn | TurnFunction] | TurnFunction

_TOKENS = re.compile(r"\s*\S+|\s+")


def tokens(text: str) -> list[str]:
    """``text`` in the pieces a scripted model streams: each word with the space before it."""
    return _TOKENS.findall(text)


class ScriptedModel:
    """Answers the N-th model call after the latest user message with the script's N-th entry.

    ``script`` is a list of turns (text, a ``ToolCall.to(...)``, a list of them with
    perhaps text to say first, a ``ModelReply``, or a function of the conversation
    returning one of these), or one
    function of the conversation for every turn. Tool calls without an id get
    ``call_<k>_<n>`` (k: the assistant messages before it, so ids never repeat). Text
    is streamed to ``on_token`` word by word, ``token_delay`` seconds apart. ``calls``
    keeps every conversation it was asked about (in this process), for tests.
    """

    def __init__(self, script: Script, *, token_delay: float = 0.0) -> None:
        if not callable(script) and not isinstance(script, Sequence):
            raise InvalidArgumentError("ScriptedModel wants a list of turns or a function")
        self.script = script
        self.token_delay = token_delay
        self.calls: list[list[Message]] = []

    async def complete(
        self,
        messages: Sequence[Message],
        tools: Sequence[ToolSpec],
        *,
        on_token: TokenCallback | None = None,
    ) -> ModelReply:
        conversation = list(messages)
        self.calls.append(conversation)
        turn = _turn(conversation)
        prompt = sum(len(tokens(m.content or "")) for m in conversation)
        said = sum(m.role == "assistant" for m in conversation)  # unique ids in the conversation
        reply = _as_reply(self._entry(turn, conversation), said, prompt)
        text = reply.message.content or ""
        if on_token is not None:
            for index, piece in enumerate(tokens(text)):
                if index and self.token_delay > 0:
                    await asyncio.sleep(self.token_delay)
                await on_token(piece)
        return reply

    def _entry(self, turn: int, conversation: list[Message]) -> Turn:
        if callable(self.script):
            return self.script(conversation)
        if turn >= len(self.script):
            raise ModelRefusedError(
                f"the script has {len(self.script)} turn(s) and was asked for turn {turn + 1}"
            )
        entry = self.script[turn]
        return entry(conversation) if callable(entry) else entry


def _listed(entry: object) -> bool:
    return isinstance(entry, Sequence) and not isinstance(entry, str)


def _turn(conversation: Sequence[Message]) -> int:
    """Model calls since the latest user message: the script starts over for each prompt."""
    turn = 0
    for message in reversed(conversation):
        if message.role == "user":
            break
        turn += message.role == "assistant"
    return turn


def _as_reply(entry: Turn, said: int, prompt_tokens: int) -> ModelReply:
    """The reply an entry stands for; its usage counts words, as a stand-in for tokens."""
    if isinstance(entry, ModelReply):
        return entry
    if isinstance(entry, str):
        return ModelReply(
            Message.assistant(entry), "stop", Usage(prompt_tokens, len(tokens(entry)))
        )
    items = [entry] if isinstance(entry, ToolCall) else list(entry) if _listed(entry) else []
    calls = [c for c in items if isinstance(c, ToolCall)]
    texts = [t for t in items if isinstance(t, str)]
    if not calls or len(calls) + len(texts) != len(items):
        raise ModelRefusedError(
            f"a scripted answer is {type(entry).__name__}, not text, a ToolCall, a list of "
            "them (with text to say first), or a ModelReply"
        )
    named = tuple(
        c if c.id else ToolCall(f"call_{said}_{n}", c.name, c.arguments)
        for n, c in enumerate(calls)
    )
    content = " ".join(texts) or None
    completion = len(named) + len(tokens(content or ""))
    return ModelReply(
        Message.assistant(content, named), "tool_calls", Usage(prompt_tokens, completion)
    )
