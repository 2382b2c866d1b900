"""An OpenAI-compatible chat-completions API as a ``Model``: OpenAI, vLLM, Ollama, llama.cpp ...

``pip install 'ledgerflow[ai]'`` (httpx). The API key is read from the environment
(``OPENAI_API_KEY`` unless ``api_key_env`` names another variable) on the worker,
when a call is made: it is never an argument, never recorded, never in a repr, an
error or a log line. Without one, no ``Authorization`` header is sent (local servers).

The server's bytes are hostile (``ledgerflow.ai.chatwire`` reads them): a reply is
bounded in bytes (``max_response_bytes``) and per line, and anything malformed is a
``lf.ModelError`` (retried by the model step's policy). HTTP 408, 409, 429 and 5xx, a
timeout or a broken connection are ``lf.ModelUnavailableError`` (retried, after the
server's ``Retry-After`` when it gave one); any other refusal (401, 404, 400 ...) is
``lf.ModelRefusedError``, never retried. Redirects are not followed: they would carry
the key to wherever the server points.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any, Final
from urllib.parse import urlsplit

try:
    import httpx
except ImportError as exc:  # pragma: no cover - depends on the install
    raise ImportError("ledgerflow.ai.openai needs httpx: pip install 'ledgerflow[ai]'") from exc

from ledgerflow.eventlog.errors import (
    ConfigurationError,
    ModelError,
    ModelRefusedError,
    ModelUnavailableError,
)

from .chatwire import (
    LineSplitter,
    StreamAssembler,
    excerpt,
    parse_completion,
    parse_json,
    request_body,
    sse_data,
)
from .messages import Message, ModelReply
from .model import TokenCallback, ToolSpec

DEFAULT_BASE_URL: Final = "https://api.openai.com/v1"
DEFAULT_MAX_RESPONSE_BYTES: Final = 8 << 20
ERROR_BODY_BYTES: Final = 4096
"""How much of a refusal's body is read, to quote its message."""
MAX_RETRY_AFTER_S: Final = 600.0
RETRIED_STATUSES: Final = frozenset({408, 409, 429})
RESERVED_OPTIONS: Final = frozenset({"model", "messages", "tools", "stream", "stream_options"})


class OpenAIChatModel:
    """``POST {base_url}/chat/completions``, streamed when the agent streams tokens.

    ``options`` go into every request body as they are (``temperature``,
    ``max_tokens``, ``tool_choice`` ...). ``stream_usage`` asks a streamed reply for
    its token counts (``stream_options.include_usage``); turn it off for a server that
    refuses the option. ``transport`` is httpx's (a proxy, or a fake server in tests).
    """

    def __init__(
        self,
        model: str,
        *,
        base_url: str = DEFAULT_BASE_URL,
        api_key_env: str | None = "OPENAI_API_KEY",
        options: Mapping[str, Any] | None = None,
        timeout: float = 120.0,
        connect_timeout: float = 10.0,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        stream_usage: bool = True,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if not isinstance(model, str) or not model:
            raise ConfigurationError("OpenAIChatModel: model must be a model name")
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigurationError(
                f"OpenAIChatModel: base_url {base_url!r} is not an http(s) URL"
            )
        if parts.username is not None or parts.password is not None or parts.query:
            raise ConfigurationError(
                "OpenAIChatModel: base_url may not carry credentials or a query; the key comes "
                "from the environment (api_key_env)"
            )
        reserved = sorted(RESERVED_OPTIONS & set(options or {}))
        if reserved:
            raise ConfigurationError(f"OpenAIChatModel: options may not set {reserved}")
        if max_response_bytes < 1024:
            raise ConfigurationError("OpenAIChatModel: max_response_bytes must be at least 1024")
        self.model = model
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.api_key_env = api_key_env
        self.options = dict(options or {})
        self.timeout = httpx.Timeout(timeout, connect=connect_timeout)
        self.max_response_bytes = max_response_bytes
        self.stream_usage = stream_usage
        self.transport = transport

    def __repr__(self) -> str:
        return f"OpenAIChatModel({self.model!r}, url={self.url!r})"

    async def complete(
        self,
        messages: Sequence[Message],
        tools: Sequence[ToolSpec],
        *,
        on_token: TokenCallback | None = None,
    ) -> ModelReply:
        stream = on_token is not None
        body = request_body(
            self.model,
            messages,
            tools,
            stream=stream,
            stream_usage=self.stream_usage,
            options=self.options,
        )
        try:
            async with (
                httpx.AsyncClient(
                    transport=self.transport, timeout=self.timeout, follow_redirects=False
                ) as http,
                http.stream("POST", self.url, json=body, headers=self._headers(stream)) as response,
            ):
                if response.status_code != 200:
                    raise await _refusal(response)
                if not _identity(response):
                    encoding = response.headers["content-encoding"]
                    raise ModelError(
                        f"the reply is {excerpt(encoding)}-encoded; none was asked for"
                    )
                kind = response.headers.get("content-type", "")
                if stream and kind.startswith("text/event-stream"):
                    return await self._read_stream(response, on_token)
                raw = await _read_bounded(response, self.max_response_bytes)
                return parse_completion(parse_json(raw, "the reply"))
        except httpx.TimeoutException as exc:
            raise ModelUnavailableError(f"the model API at {self.url} timed out: {exc!r}") from exc
        except httpx.HTTPError as exc:  # the connection: refused, reset, a bad response line
            raise ModelUnavailableError(
                f"the model API at {self.url} could not be reached: {type(exc).__name__}: "
                f"{excerpt(str(exc))}"
            ) from exc

    def _headers(self, stream: bool) -> dict[str, str]:
        # identity: a compressed reply could inflate far past max_response_bytes in one chunk
        headers = {
            "accept": "text/event-stream" if stream else "application/json",
            "accept-encoding": "identity",
        }
        key = os.environ.get(self.api_key_env) if self.api_key_env else None
        if key:
            headers["authorization"] = f"Bearer {key}"
        return headers

    async def _read_stream(
        self, response: httpx.Response, on_token: TokenCallback | None
    ) -> ModelReply:
        lines = LineSplitter()
        reply = StreamAssembler()
        received = 0
        async for data in response.aiter_bytes():
            received += len(data)
            if received > self.max_response_bytes:
                raise ModelError(f"the streamed reply is over {self.max_response_bytes} bytes")
            for line in lines.feed(data):
                if await _take(reply, line, on_token):
                    return reply.reply()
        for line in lines.close():
            if await _take(reply, line, on_token):
                break
        return reply.reply()


async def _take(reply: StreamAssembler, line: str, on_token: TokenCallback | None) -> bool:
    """Feed one line; True once the stream says it is done."""
    payload = sse_data(line)
    if payload is None:
        return False
    text = reply.feed(payload)
    if text and on_token is not None:
        await on_token(text)
    return reply.done


def _identity(response: httpx.Response) -> bool:
    """Not compressed: the bytes read are the bytes sent, so counting them bounds them."""
    encoding = response.headers.get("content-encoding", "identity").strip().lower()
    return encoding in ("", "identity")


async def _read_bounded(response: httpx.Response, limit: int) -> bytes:
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise ModelError(f"the reply is {declared} bytes, over the limit of {limit}")
    body = bytearray()
    async for data in response.aiter_bytes():
        body += data
        if len(body) > limit:
            raise ModelError(f"the reply is over the limit of {limit} bytes")
    return bytes(body)


async def _refusal(response: httpx.Response) -> ModelError:
    """The error for a non-200 answer, quoting a little of the server's message."""
    raw = b""
    if _identity(response):  # a compressed body is not worth inflating for a quote
        try:
            raw = await _read_bounded(response, ERROR_BODY_BYTES)
        except ModelError:
            raw = b""  # a refusal with a huge body: the status alone says enough
    detail = excerpt(raw) if raw else ""
    try:
        data = parse_json(raw, "the error") if raw else None
    except ModelError:
        data = None
    if isinstance(data, dict) and isinstance(data.get("error"), dict):
        message = data["error"].get("message")
        if isinstance(message, str):
            detail = excerpt(message)
    status = response.status_code
    text = f"the model API answered HTTP {status}" + (f": {detail}" if detail else "")
    if status in RETRIED_STATUSES or status >= 500:
        return ModelUnavailableError(text, retry_after=_retry_after(response))
    return ModelRefusedError(text)


def _retry_after(response: httpx.Response) -> float | None:
    """The server's ``Retry-After`` in seconds, when it is a sane number of them."""
    value = response.headers.get("retry-after", "").strip()
    try:
        seconds = float(value)
    except ValueError:
        return None  # absent, or an HTTP date: the step's own backoff applies
    if not 0 <= seconds <= MAX_RETRY_AFTER_S:
        return None
    return seconds
