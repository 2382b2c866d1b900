"""The OpenAI-compatible adapter against fake servers: good replies, and hostile ones.

No network: an httpx MockTransport stands in for the API, and one test speaks raw
HTTP from a server on 127.0.0.1 (a body that never ends, which only a real socket
shows). Every hostile reply must end in a ModelError that says what was wrong.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

import ledgerflow as lf
from ledgerflow.ai import Message, ToolSpec
from ledgerflow.ai.chatwire import MAX_JSON_DEPTH, LineSplitter, StreamAssembler
from ledgerflow.ai.openai import OpenAIChatModel

KEY = "sk-test-0123456789-secret"
CONVERSATION = [Message.system("Be brief."), Message.user("Where is A-17?")]
LOOKUP = ToolSpec(
    "lookup_order",
    "Look an order up.",
    {"type": "object", "properties": {"order_id": {"type": "string"}}, "required": ["order_id"]},
)

Handler = Callable[[httpx.Request], httpx.Response]


class Chunks(httpx.AsyncByteStream):
    """A response body delivered in the given pieces (lines cut anywhere)."""

    def __init__(self, pieces: list[bytes]) -> None:
        self.pieces = pieces

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for piece in self.pieces:
            yield piece


def sse(*chunks: Any, done: bool = True) -> bytes:
    lines = [f"data: {json.dumps(c) if not isinstance(c, str) else c}\n\n" for c in chunks]
    if done:
        lines.append("data: [DONE]\n\n")
    return "".join(lines).encode()


def model_for(handler: Handler, **options: Any) -> tuple[OpenAIChatModel, list[httpx.Request]]:
    seen: list[httpx.Request] = []

    def record(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return handler(request)

    model = OpenAIChatModel(
        "test-model",
        base_url="http://127.0.0.1:9/v1",
        transport=httpx.MockTransport(record),
        **options,
    )
    return model, seen


def completion(message: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"choices": [{"index": 0, "message": message, "finish_reason": "stop"}], **extra}


@pytest.fixture(autouse=True)
def api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)


async def test_a_whole_reply_with_text_and_usage() -> None:
    body = completion(
        {"role": "assistant", "content": "On its way."},
        usage={"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15},
    )
    model, seen = model_for(lambda request: httpx.Response(200, json=body))
    reply = await model.complete(CONVERSATION, [LOOKUP])
    assert reply.message == Message.assistant("On its way.")
    assert reply.finish_reason == "stop"
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (12, 3)
    (request,) = seen
    assert str(request.url) == "http://127.0.0.1:9/v1/chat/completions"
    assert request.headers["authorization"] == f"Bearer {KEY}"
    assert request.headers["accept-encoding"] == "identity"
    sent = json.loads(request.content)
    assert sent["model"] == "test-model" and sent["stream"] is False
    assert sent["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Where is A-17?"},
    ]
    assert sent["tools"][0]["function"]["name"] == "lookup_order"
    assert sent["tools"][0]["function"]["parameters"] == LOOKUP.parameters


async def test_a_whole_reply_with_tool_calls_and_the_conversation_sent_back() -> None:
    call = {
        "id": "call_9",
        "type": "function",
        "function": {"name": "lookup_order", "arguments": '{"order_id": "A-17"}'},
    }
    body = completion({"role": "assistant", "content": None, "tool_calls": [call]})
    model, seen = model_for(lambda request: httpx.Response(200, json=body))
    reply = await model.complete(CONVERSATION, [LOOKUP])
    assert [(c.id, c.name, c.arguments) for c in reply.message.tool_calls] == [
        ("call_9", "lookup_order", {"order_id": "A-17"})
    ]
    # Sent back next turn in the wire shape: arguments as a JSON string, the result by id.
    follow = [*CONVERSATION, reply.message, Message.tool("call_9", '{"status": "shipped"}')]
    await model.complete(follow, [LOOKUP])
    sent = json.loads(seen[1].content)["messages"]
    assert sent[2]["tool_calls"] == [call]
    assert sent[3] == {"role": "tool", "content": '{"status": "shipped"}', "tool_call_id": "call_9"}


async def test_a_streamed_reply_cut_anywhere_is_put_back_together() -> None:
    raw = sse(
        {"choices": [{"index": 0, "delta": {"role": "assistant", "content": "Your "}}]},
        {"choices": [{"index": 0, "delta": {"content": "order "}}]},
        {"choices": [{"index": 0, "delta": {"content": "shipped."}, "finish_reason": "stop"}]},
        {"choices": [], "usage": {"prompt_tokens": 20, "completion_tokens": 3}},
    )
    pieces = [raw[i : i + 7] for i in range(0, len(raw), 7)]  # lines split across reads

    def handler(request: httpx.Request) -> httpx.Response:
        headers = {"content-type": "text/event-stream"}
        return httpx.Response(200, headers=headers, stream=Chunks(pieces))

    model, seen = model_for(handler)
    streamed: list[str] = []

    async def on_token(text: str) -> None:
        streamed.append(text)

    reply = await model.complete(CONVERSATION, [], on_token=on_token)
    assert streamed == ["Your ", "order ", "shipped."]
    assert reply.message.content == "Your order shipped."
    assert reply.usage.prompt_tokens == 20
    sent = json.loads(seen[0].content)
    assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}
    assert "tools" not in sent


async def test_streamed_tool_call_deltas_are_assembled_per_index() -> None:
    def delta(calls: list[dict[str, Any]], finish: str | None = None) -> dict[str, Any]:
        return {"choices": [{"index": 0, "delta": {"tool_calls": calls}, "finish_reason": finish}]}

    raw = sse(
        delta([{"index": 0, "id": "c1", "function": {"name": "lookup_order", "arguments": ""}}]),
        delta([{"index": 1, "id": "c2", "function": {"name": "lookup_order", "arguments": "{}"}}]),
        delta([{"index": 0, "function": {"arguments": '{"order_'}}]),
        delta([{"index": 0, "function": {"arguments": 'id": "A-17"}'}}]),
        delta([], finish="tool_calls"),
    )
    model, _ = model_for(
        lambda r: httpx.Response(200, headers={"content-type": "text/event-stream"}, content=raw)
    )

    async def ignore(text: str) -> None:
        raise AssertionError(f"no text was sent, got {text!r}")

    reply = await model.complete(CONVERSATION, [LOOKUP], on_token=ignore)
    assert [(c.id, c.arguments) for c in reply.message.tool_calls] == [
        ("c1", {"order_id": "A-17"}),
        ("c2", {}),
    ]
    assert reply.finish_reason == "tool_calls" and reply.message.content is None


async def test_a_server_that_answers_a_stream_with_plain_json_is_read_as_json() -> None:
    body = completion({"role": "assistant", "content": "Plain."})
    model, _ = model_for(lambda request: httpx.Response(200, json=body))

    async def on_token(text: str) -> None:
        raise AssertionError("nothing streams from a plain reply")

    reply = await model.complete(CONVERSATION, [], on_token=on_token)
    assert reply.message.content == "Plain."


async def test_rate_limits_are_retried_after_the_servers_delay_and_refusals_never() -> None:
    limited = {"error": {"message": "slow down", "type": "rate_limit"}}
    model, _ = model_for(lambda r: httpx.Response(429, headers={"retry-after": "7"}, json=limited))
    with pytest.raises(lf.ModelUnavailableError, match="HTTP 429: slow down") as caught:
        await model.complete(CONVERSATION, [])
    assert caught.value.retry_after == 7.0
    assert isinstance(caught.value, lf.RetryableError)

    model, _ = model_for(lambda r: httpx.Response(503, headers={"retry-after": "1e9"}))
    with pytest.raises(lf.ModelUnavailableError, match="HTTP 503") as caught:
        await model.complete(CONVERSATION, [])
    assert caught.value.retry_after is None  # absurd: the step's own backoff applies

    bad_key = {"error": {"message": f"Incorrect API key provided: {KEY[:8]}***"}}
    model, _ = model_for(lambda r: httpx.Response(401, json=bad_key))
    with pytest.raises(lf.ModelRefusedError, match="HTTP 401") as refused:
        await model.complete(CONVERSATION, [])
    assert isinstance(refused.value, lf.FatalError)
    assert KEY not in str(refused.value) and KEY not in repr(model)


async def test_redirects_are_refused_not_followed() -> None:
    model, seen = model_for(
        lambda r: httpx.Response(307, headers={"location": "http://elsewhere.invalid/"})
    )
    with pytest.raises(lf.ModelRefusedError, match="HTTP 307"):
        await model.complete(CONVERSATION, [])
    assert len(seen) == 1


async def test_no_key_in_the_environment_sends_no_authorization(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY")
    body = completion({"role": "assistant", "content": "ok"})
    model, seen = model_for(lambda request: httpx.Response(200, json=body))
    await model.complete(CONVERSATION, [])
    assert "authorization" not in seen[0].headers


async def test_an_unreachable_server_is_unavailable(unused_tcp_port: int) -> None:
    model = OpenAIChatModel("m", base_url=f"http://127.0.0.1:{unused_tcp_port}/v1")
    with pytest.raises(lf.ModelUnavailableError, match="could not be reached: ConnectError"):
        await model.complete(CONVERSATION, [])


# --- hostile replies ---------------------------------------------------------------------


def _nested(levels: int) -> str:
    return "[" * levels + "]" * levels


HOSTILE: list[tuple[str, bytes, str]] = [
    ("not json", b"<html>oops</html>", "the reply is not JSON"),
    ("a list", b"[1, 2]", "the reply is not a JSON object"),
    ("no choices", b'{"choices": []}', "has no choices"),
    ("choices not a list", b'{"choices": {"a": 1}}', "'choices' is a dict, not list"),
    ("content a number", json.dumps(completion({"content": 5})).encode(), "'content' is a int"),
    (
        "tool calls not a list",
        json.dumps(completion({"tool_calls": "x"})).encode(),
        "'tool_calls' is a str",
    ),
    (
        "arguments not an object",
        json.dumps(
            completion({"tool_calls": [{"id": "c", "function": {"name": "f", "arguments": "[1]"}}]})
        ).encode(),
        "are a JSON list, not an object",
    ),
    (
        "arguments not json",
        json.dumps(
            completion({"tool_calls": [{"id": "c", "function": {"name": "f", "arguments": "{x"}}]})
        ).encode(),
        "arguments of tool call 'f' is not JSON",
    ),
    (
        "a tool call without a name",
        json.dumps(
            completion({"tool_calls": [{"id": "c", "function": {"arguments": "{}"}}]})
        ).encode(),
        "has no name",
    ),
    (
        "too many tool calls",
        json.dumps(completion({"tool_calls": [{"function": {"name": "f"}}] * 65})).encode(),
        "asks for 65 tool calls",
    ),
    (
        "usage a bool",
        json.dumps(completion({"content": "x"}, usage={"prompt_tokens": True})).encode(),
        "'prompt_tokens' is a bool",
    ),
    (
        "usage too large",
        json.dumps(completion({"content": "x"}, usage={"completion_tokens": 2**64})).encode(),
        "is not a token count",
    ),
    ("nested too deep", _nested(MAX_JSON_DEPTH + 1).encode(), "nested deeper than 32"),
    ("nested past the parser", _nested(100_000).encode(), "nested too deeply"),
    ("huge integer", b'{"choices": [' + b"9" * 5000 + b"]}", "the reply is not JSON"),
    ("an error object", b'{"error": {"message": "overloaded"}}', "reported an error: overloaded"),
]


@pytest.mark.parametrize(("raw", "problem"), [h[1:] for h in HOSTILE], ids=[h[0] for h in HOSTILE])
async def test_a_malformed_whole_reply_is_a_model_error(raw: bytes, problem: str) -> None:
    model, _ = model_for(lambda r: httpx.Response(200, content=raw))
    with pytest.raises(lf.ModelError, match=problem) as caught:
        await model.complete(CONVERSATION, [])
    assert not isinstance(caught.value, lf.FatalError)  # another attempt may do better


async def test_an_oversized_reply_is_refused_by_its_length_or_as_it_arrives() -> None:
    big = b'{"choices": "' + b"x" * 5000 + b'"}'
    model, _ = model_for(lambda r: httpx.Response(200, content=big), max_response_bytes=4096)
    with pytest.raises(lf.ModelError, match="over the limit of 4096"):
        await model.complete(CONVERSATION, [])

    pieces = [b'{"choices": "'] + [b"x" * 1000] * 10  # no content-length: counted as read
    model, _ = model_for(
        lambda r: httpx.Response(200, stream=Chunks(pieces)), max_response_bytes=4096
    )
    with pytest.raises(lf.ModelError, match="over the limit of 4096 bytes"):
        await model.complete(CONVERSATION, [])


STREAMED: list[tuple[str, list[bytes], str]] = [
    ("ends without done", [sse({"choices": [{"delta": {"content": "a"}}]}, done=False)], "ended"),
    ("not json", [b"data: {nope\n\n"], "a streamed chunk is not JSON"),
    ("a line without end", [b"data: " + b"x" * 2000] * 1000, "longer than 1048576 bytes"),
    ("not utf-8", [b"data: \xff\xfe\n\n"], "not UTF-8"),
    (
        "tool index out of range",
        [sse({"choices": [{"delta": {"tool_calls": [{"index": 9999}]}}]})],
        "index 9999",
    ),
    (
        "delta content a list",
        [sse({"choices": [{"delta": {"content": ["a"]}}]})],
        "'content' is a list",
    ),
    ("an error event", [sse({"error": {"message": "boom"}})], "reported an error: boom"),
    (
        "streamed arguments not an object",
        [
            sse(
                {
                    "choices": [
                        {
                            "delta": {
                                "tool_calls": [
                                    {"index": 0, "function": {"name": "f", "arguments": "7"}}
                                ]
                            }
                        }
                    ]
                }
            )
        ],
        "are a JSON int",
    ),
]


@pytest.mark.parametrize(
    ("pieces", "problem"), [s[1:] for s in STREAMED], ids=[s[0] for s in STREAMED]
)
async def test_a_malformed_stream_is_a_model_error(pieces: list[bytes], problem: str) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        headers = {"content-type": "text/event-stream"}
        return httpx.Response(200, headers=headers, stream=Chunks(pieces))

    model, _ = model_for(handler, max_response_bytes=64 << 20)

    async def on_token(text: str) -> None:
        pass

    with pytest.raises(lf.ModelError, match=problem):
        await model.complete(CONVERSATION, [], on_token=on_token)


async def test_a_compressed_reply_is_refused() -> None:
    model, _ = model_for(
        lambda r: httpx.Response(200, headers={"content-encoding": "gzip"}, content=b"\x1f\x8b")
    )
    with pytest.raises(lf.ModelError, match="gzip-encoded"):
        await model.complete(CONVERSATION, [])


async def test_a_real_socket_streaming_without_end_is_cut_at_the_limit() -> None:
    """A server on 127.0.0.1 sends an endless chunked body: reading stops at the bound."""
    sent = 0

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal sent
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            b"transfer-encoding: chunked\r\n\r\n"
        )
        piece = b'data: {"choices": [{"delta": {"content": "' + b"a" * 4000 + b'"}}]}\n\n'
        try:
            while sent < 50 << 20:  # bounded, so the test stops whatever happens
                writer.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
                await writer.drain()
                sent += len(piece)
        except (ConnectionError, OSError):
            pass  # the client hung up, as it should
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        model = OpenAIChatModel(
            "m", base_url=f"http://127.0.0.1:{port}/v1", max_response_bytes=1 << 20
        )
        tokens = 0

        async def on_token(text: str) -> None:
            nonlocal tokens
            tokens += 1

        with pytest.raises(lf.ModelError, match="over 1048576 bytes"):
            await model.complete(CONVERSATION, [], on_token=on_token)
        assert 0 < tokens < 300
    finally:
        server.close()
        await server.wait_closed()
    assert sent < 20 << 20


# --- the pieces -----------------------------------------------------------------------------


def test_lines_split_anywhere_come_out_whole() -> None:
    lines = LineSplitter(limit=100)
    assert lines.feed(b"data: a\r") == []
    assert lines.feed(b"\ndata: b\n\nda") == ["data: a", "data: b", ""]
    assert lines.close() == ["da"]
    with pytest.raises(lf.ModelError, match="longer than 100 bytes"):
        lines.feed(b"x" * 101)


def test_a_stream_that_says_why_it_stopped_needs_no_done_marker() -> None:
    stream = StreamAssembler()
    stream.feed(json.dumps({"choices": [{"delta": {"content": "hi"}, "finish_reason": "length"}]}))
    reply = stream.reply()
    assert (reply.message.content, reply.finish_reason) == ("hi", "length")


def test_configuration_is_checked_where_the_model_is_built() -> None:
    with pytest.raises(lf.ConfigurationError, match="credentials"):
        OpenAIChatModel("m", base_url="https://user:pw@api.example/v1")
    with pytest.raises(lf.ConfigurationError, match="not an http"):
        OpenAIChatModel("m", base_url="ftp://api.example/v1")
    with pytest.raises(lf.ConfigurationError, match="may not set"):
        OpenAIChatModel("m", options={"stream": True})
    assert isinstance(OpenAIChatModel("m"), lf.ai.Model)
