"""The chat-completions wire format: requests built, replies read as hostile bytes.

Kept apart from the HTTP (``ledgerflow.ai.openai``) so that every rule about what
a server may send is plain code, tested without a socket. Whatever arrives is
bounded (bytes per line, per reply, per tool call; nesting; counts), checked for
type, and turned into a ``ModelReply`` or a ``ModelError`` that says what was wrong
(quoting at most a short, printable excerpt), never into a stray exception.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from ledgerflow.eventlog.errors import ModelError
from ledgerflow.eventlog.jsonview import json_depth

from .messages import Message, ModelReply, ToolCall, Usage
from .model import ToolSpec

MAX_LINE_BYTES: Final = 1 << 20
"""One server-sent-events line (one chunk of a streamed reply)."""
MAX_JSON_DEPTH: Final = 32
MAX_TOOL_CALLS: Final = 64
MAX_ID_CHARS: Final = 256
MAX_NAME_CHARS: Final = 256
MAX_COUNT: Final = 2**53
"""Token counts at or above this are not counts (and would not fit the log's integers)."""
EXCERPT: Final = 200


def excerpt(raw: bytes | str) -> str:
    """A short, printable piece of what a server sent, for an error message."""
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    shown = text[:EXCERPT].encode("unicode_escape").decode("ascii")
    return shown + ("..." if len(text) > EXCERPT else "")


# --- requests --------------------------------------------------------------------------------


def message_to_wire(message: Message) -> dict[str, Any]:
    wire: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.tool_calls:
        wire["tool_calls"] = [
            {
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": json.dumps(call.arguments)},
            }
            for call in message.tool_calls
        ]
    if message.tool_call_id is not None:
        wire["tool_call_id"] = message.tool_call_id
    return wire


def tool_to_wire(spec: ToolSpec) -> dict[str, Any]:
    return {
        "type": "function",
        "function": {
            "name": spec.name,
            "description": spec.description,
            "parameters": spec.parameters,
        },
    }


def request_body(
    model: str,
    messages: Sequence[Message],
    tools: Sequence[ToolSpec],
    *,
    stream: bool,
    stream_usage: bool,
    options: dict[str, Any],
) -> dict[str, Any]:
    body: dict[str, Any] = {**options, "model": model}
    body["messages"] = [message_to_wire(m) for m in messages]
    if tools:
        body["tools"] = [tool_to_wire(t) for t in tools]
    body["stream"] = stream
    if stream and stream_usage:
        body["stream_options"] = {"include_usage": True}
    return body


# --- replies -----------------------------------------------------------------------------------


def parse_json(raw: bytes | str, what: str) -> Any:
    """JSON from the server, nested no deeper than MAX_JSON_DEPTH, or a ModelError."""
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)[:100]
        raise ModelError(f"{what} is not JSON ({reason}): {excerpt(raw)}") from None
    if json_depth(value) > MAX_JSON_DEPTH:
        raise ModelError(f"{what} is nested deeper than {MAX_JSON_DEPTH} levels")
    return value


def _field(data: Any, key: str, kinds: type | tuple[type, ...], what: str) -> Any:
    """``data[key]`` of one of ``kinds`` (None when absent or null), or a ModelError."""
    if not isinstance(data, dict):
        raise ModelError(f"{what} is not a JSON object")
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in _tuple(kinds)):
        raise ModelError(f"{what}: {key!r} is a {type(value).__name__}, not {_names(kinds)}")
    return value


def _tuple(kinds: type | tuple[type, ...]) -> tuple[type, ...]:
    return kinds if isinstance(kinds, tuple) else (kinds,)


def _names(kinds: type | tuple[type, ...]) -> str:
    return " or ".join(k.__name__ for k in _tuple(kinds))


def _text(data: Any, key: str, what: str, limit: int) -> str | None:
    value = _field(data, key, str, what)
    if value is not None and len(value) > limit:
        raise ModelError(f"{what}: {key!r} is longer than {limit} characters")
    return value  # type: ignore[no-any-return]


def _usage(data: Any) -> Usage:
    usage = _field(data, "usage", dict, "the reply")
    if usage is None:
        return Usage()
    counts = []
    for key in ("prompt_tokens", "completion_tokens"):
        value = _field(usage, key, int, "the reply's usage") or 0
        if not 0 <= value < MAX_COUNT:
            raise ModelError(f"the reply's usage: {key} = {value} is not a token count")
        counts.append(value)
    return Usage(counts[0], counts[1])


def _arguments(raw: str, name: str) -> dict[str, Any]:
    value = parse_json(raw or "{}", f"the arguments of tool call {excerpt(name)!r}")
    if not isinstance(value, dict):
        raise ModelError(
            f"the arguments of tool call {excerpt(name)!r} are a JSON {type(value).__name__}, "
            "not an object"
        )
    return value


def _choice(data: Any) -> dict[str, Any] | None:
    choices = _field(data, "choices", list, "the reply")
    if not choices:
        return None
    first = choices[0]
    if not isinstance(first, dict):
        raise ModelError("the reply's first choice is not a JSON object")
    return first


def _check_error(data: Any) -> None:
    if isinstance(data, dict) and data.get("error") is not None:
        error = data["error"]
        message = error.get("message") if isinstance(error, dict) else error
        raise ModelError(f"the model API reported an error: {excerpt(str(message))}")


def parse_completion(data: Any) -> ModelReply:
    """A whole (not streamed) chat completion as a reply."""
    _check_error(data)
    choice = _choice(data)
    if choice is None:
        raise ModelError("the reply has no choices")
    message = _field(choice, "message", dict, "the reply's choice")
    if message is None:
        raise ModelError("the reply's choice has no message")
    content = _field(message, "content", str, "the reply's message")
    calls_data = _field(message, "tool_calls", list, "the reply's message") or []
    if len(calls_data) > MAX_TOOL_CALLS:
        raise ModelError(
            f"the reply asks for {len(calls_data)} tool calls (at most {MAX_TOOL_CALLS})"
        )
    calls = []
    for index, raw in enumerate(calls_data):
        what = f"tool call {index}"
        function = _field(raw, "function", dict, what)
        if function is None:
            raise ModelError(f"{what} has no function")
        name = _text(function, "name", what, MAX_NAME_CHARS)
        if not name:
            raise ModelError(f"{what} has no name")
        call_id = _text(raw, "id", what, MAX_ID_CHARS) or f"call_{index}"
        arguments = _text(function, "arguments", what, 1 << 30) or ""
        calls.append(ToolCall(call_id, name, _arguments(arguments, name)))
    finish = _text(choice, "finish_reason", "the reply's choice", 100) or "stop"
    return ModelReply(Message.assistant(content, tuple(calls)), finish, _usage(data))


@dataclass
class _PartialCall:
    id: str = ""
    name: str = ""
    arguments: list[str] = field(default_factory=list)


@dataclass
class StreamAssembler:
    """A streamed reply put back together from its chunks, one ``feed`` per ``data:`` line."""

    text: list[str] = field(default_factory=list)
    calls: dict[int, _PartialCall] = field(default_factory=dict)
    finish_reason: str | None = None
    usage: Usage = field(default_factory=Usage)
    done: bool = False

    def feed(self, data: str) -> str | None:
        """Take one ``data:`` payload; returns the text it adds (to stream on), if any."""
        if data.strip() == "[DONE]":
            self.done = True
            return None
        chunk = parse_json(data, "a streamed chunk")
        _check_error(chunk)
        if isinstance(chunk, dict) and chunk.get("usage") is not None:
            self.usage = _usage(chunk)
        choice = _choice(chunk)
        if choice is None:
            return None
        finish = _text(choice, "finish_reason", "a streamed choice", 100)
        if finish:
            self.finish_reason = finish
        delta = _field(choice, "delta", dict, "a streamed choice")
        if delta is None:
            return None
        for raw in _field(delta, "tool_calls", list, "a streamed delta") or []:
            self._call_delta(raw)
        content = _field(delta, "content", str, "a streamed delta")
        if content:
            self.text.append(content)
        return content or None

    def _call_delta(self, raw: Any) -> None:
        what = "a streamed tool call"
        index = _field(raw, "index", int, what)
        if index is None:
            index = len(self.calls) - 1 if self.calls else 0
        if not 0 <= index < MAX_TOOL_CALLS:
            raise ModelError(f"{what} has index {index} (at most {MAX_TOOL_CALLS} calls)")
        partial = self.calls.setdefault(index, _PartialCall())
        call_id = _text(raw, "id", what, MAX_ID_CHARS)
        if call_id:
            partial.id = call_id
        function = _field(raw, "function", dict, what) or {}
        name = _text(function, "name", what, MAX_NAME_CHARS)
        if name and name != partial.name:
            # Sent once by most servers, repeated in every delta by some, in pieces by few.
            partial.name = partial.name + name
            if len(partial.name) > MAX_NAME_CHARS:
                raise ModelError(f"{what}: its name is longer than {MAX_NAME_CHARS} characters")
        piece = _text(function, "arguments", what, MAX_LINE_BYTES)
        if piece:
            partial.arguments.append(piece)

    def reply(self) -> ModelReply:
        """The whole reply, once the stream has ended; a ModelError if it ended too soon."""
        if not self.done and self.finish_reason is None:
            raise ModelError("the stream ended before the reply was complete (no [DONE])")
        calls = []
        for index in sorted(self.calls):
            partial = self.calls[index]
            if not partial.name:
                raise ModelError(f"streamed tool call {index} has no name")
            arguments = _arguments("".join(partial.arguments), partial.name)
            calls.append(ToolCall(partial.id or f"call_{index}", partial.name, arguments))
        content = "".join(self.text) if self.text else None
        finish = self.finish_reason or ("tool_calls" if calls else "stop")
        return ModelReply(Message.assistant(content, tuple(calls)), finish, self.usage)


class LineSplitter:
    """Bytes of an event stream cut into lines, none longer than ``MAX_LINE_BYTES``."""

    def __init__(self, limit: int = MAX_LINE_BYTES) -> None:
        self.limit = limit
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[str]:
        self._buffer += data
        lines = []
        while True:
            end = self._buffer.find(b"\n")
            if end < 0:
                break
            lines.append(self._line(bytes(self._buffer[:end])))
            del self._buffer[: end + 1]
        if len(self._buffer) > self.limit:
            raise ModelError(f"a streamed line is longer than {self.limit} bytes")
        return lines

    def close(self) -> list[str]:
        rest, self._buffer = bytes(self._buffer), bytearray()
        return [self._line(rest)] if rest.strip() else []

    def _line(self, raw: bytes) -> str:
        if len(raw) > self.limit:
            raise ModelError(f"a streamed line is longer than {self.limit} bytes")
        try:
            return raw.rstrip(b"\r").decode("utf-8")
        except UnicodeDecodeError:
            raise ModelError(f"a streamed line is not UTF-8: {excerpt(raw)}") from None


def sse_data(line: str) -> str | None:
    """The payload of a ``data:`` line; None for comments, other fields and blank lines."""
    if not line.startswith("data:"):
        return None
    payload = line[5:]
    return payload[1:] if payload.startswith(" ") else payload
