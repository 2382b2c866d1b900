"""FastAPI integration: one client per app, a dependency that hands it out, a router to mount.

Install the ``fastapi`` extra (``pip install 'ledgerflow[fastapi]'``)::

    from fastapi import FastAPI
    from ledgerflow.fastapi import ClientDep, lifespan, router

    app = FastAPI(lifespan=lifespan())            # URLs and namespace from the environment
    app.include_router(router(workflows=[checkout]), prefix="/ledgerflow")

    @app.post("/orders")
    async def order(body: Order, client: ClientDep) -> dict[str, str]:
        run = await client.start(checkout, body.id, body.items)
        return {"run_id": run.run_id}

Why a lifespan: a client holds a RabbitMQ connection and a Redis pool; opening one
per request would cost a handshake each time and leak on errors. The router only
starts the workflows it is given (an HTTP body must never choose what code runs),
reads every body as hostile (bounded in bytes and nesting, JSON only) and answers
each failure with a status and a one-line reason, never a traceback.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Annotated, Any

try:
    from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
    from fastapi.responses import JSONResponse, StreamingResponse
except ImportError as exc:  # pragma: no cover - depends on the install
    raise ImportError(
        "ledgerflow.fastapi needs FastAPI: pip install 'ledgerflow[fastapi]'"
    ) from exc

from ledgerflow.eventlog.errors import (
    HookNotFoundError,
    InvalidArgumentError,
    LedgerflowError,
    ResultTimeoutError,
    RunCancelled,
    RunNotFoundError,
    SerializationError,
    WorkflowFailedError,
)
from ledgerflow.eventlog.jsonview import json_depth, page_view
from ledgerflow.eventlog.names import WEBHOOK_TOKEN_RE, check_output_name, check_run_id
from ledgerflow.eventlog.outputs import Chunk, check_position
from ledgerflow.scheduler import Client
from ledgerflow.scheduler.registry import WorkflowFunction

STATE_KEY = "ledgerflow_client"
MAX_BODY_BYTES = 1 << 20
"""A request body over this is refused (413) before it is parsed."""
MAX_NESTING = 32
MAX_RESULT_WAIT_S = 60.0
SECRET_ENV = "LEDGERFLOW_WEBHOOK_SECRET"
SIGNATURE_HEADER = "x-ledgerflow-signature"
DROPPED_HEADERS = frozenset(
    {"authorization", "proxy-authorization", "cookie", "set-cookie", SIGNATURE_HEADER}
)
MAX_HEADERS = 50
MAX_STREAM_READERS = 1000
"""Server-sent-event streams one router serves at once (more: 503)."""
SSE_KEEPALIVE_S = 15.0
MAX_HEADER_VALUE = 1024


def lifespan(
    *,
    amqp_url: str | None = None,
    redis_url: str | None = None,
    namespace: str | None = None,
) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """A FastAPI lifespan that opens one ``lf.Client`` for the app and closes it at shutdown.

    Arguments default to ``LEDGERFLOW_AMQP_URL``, ``LEDGERFLOW_REDIS_URL`` and
    ``LEDGERFLOW_NAMESPACE``, as for every other process. An app with a lifespan of
    its own enters this one inside it: ``async with lifespan()(app): ...``.
    """

    @asynccontextmanager
    async def open_client(app: FastAPI) -> AsyncIterator[None]:
        async with Client.connect(amqp_url, redis_url, namespace=namespace) as client:
            setattr(app.state, STATE_KEY, client)
            try:
                yield
            finally:
                delattr(app.state, STATE_KEY)

    return open_client


def get_client(request: Request) -> Client:
    """The app's client, for ``Depends(get_client)``; a clear error if the lifespan is missing."""
    client = getattr(request.app.state, STATE_KEY, None)
    if not isinstance(client, Client):
        raise RuntimeError(
            "no ledgerflow client on this app: create it with "
            "FastAPI(lifespan=ledgerflow.fastapi.lifespan())"
        )
    return client


ClientDep = Annotated[Client, Depends(get_client)]
"""An endpoint parameter that receives the app's client: ``client: ClientDep``."""


def router(
    *,
    workflows: Iterable[WorkflowFunction[Any, Any] | str],
    webhook_secret: str | None = None,
) -> APIRouter:
    """Endpoints to start the given workflows, read runs, cancel them and resume hooks.

    - ``POST /runs``: ``{"workflow": name, "args": [...], "kwargs": {...}, "run_id": opt}``
      starts a run (201, ``{"run_id", "workflow"}``); only ``workflows`` may be started
      (404 otherwise); arguments that do not fit the workflow are 422. Idempotent for a
      given ``run_id``.
    - ``GET /runs/{run_id}``: its status, and its result or error once it has ended.
    - ``GET /runs/{run_id}/result?wait=S``: waits up to S seconds (at most 60): 200 with the
      result, 409 if it failed or was cancelled, 202 if it is still running.
    - ``POST /runs/{run_id}/cancel``: 202; ``POST /hooks/{token}``: resumes the hook with
      the JSON body (202, or 404 for no live hook).
    - ``GET /runs/{run_id}/streams/{name}?start=N``: the run's output stream as
      server-sent events (``chunk`` events whose id is the chunk's index, then ``end``);
      resumes after ``Last-Event-ID``.
    - ``/webhooks/{token}``: ``webhook_router``'s, with ``webhook_secret``.
    """
    allowed = {w.name if isinstance(w, WorkflowFunction) else str(w) for w in workflows}
    api = APIRouter()

    @api.post("/runs", status_code=201)
    async def start_run(request: Request) -> dict[str, str]:
        body = await _json_body(request)
        if not isinstance(body, dict):
            raise HTTPException(400, "the body must be a JSON object")
        name = body.get("workflow")
        if not isinstance(name, str) or name not in allowed:
            raise HTTPException(404, f"no workflow {str(name)[:200]!r} may be started here")
        args, kwargs, run_id = body.get("args", []), body.get("kwargs", {}), body.get("run_id")
        if not isinstance(args, list) or not isinstance(kwargs, dict):
            raise HTTPException(400, "args must be a JSON list and kwargs a JSON object")
        if run_id is not None and not isinstance(run_id, str):
            raise HTTPException(400, "run_id must be a string")
        client = get_client(request)
        try:
            run = await client.start(name, *args, run_id=run_id, **kwargs)
        except (InvalidArgumentError, SerializationError, TypeError, ValueError) as exc:
            raise HTTPException(422, _reason(exc)) from None
        return {"run_id": run.run_id, "workflow": name}

    @api.get("/runs/{run_id}")
    async def read_run(run_id: str, request: Request) -> dict[str, Any]:
        state = await get_client(request).state(_run_id(run_id))
        if state.status == "absent":
            raise HTTPException(404, f"no run {run_id!r}")
        view: dict[str, Any] = {
            "run_id": state.run_id,
            "workflow": state.workflow,
            "status": state.status,
        }
        if state.status == "completed":
            # Through result(): a value stored out of line is fetched, not shown as a reference.
            view["result"] = page_view(await get_client(request).result(state.run_id, timeout=0))
        if state.error is not None:
            view["error"] = {"type": state.error.type, "message": state.error.message}
        return view

    @api.get("/runs/{run_id}/result")
    async def run_result(run_id: str, request: Request, wait: float = 0.0) -> JSONResponse:
        if not 0.0 <= wait <= MAX_RESULT_WAIT_S:
            raise HTTPException(400, f"wait must be from 0 to {MAX_RESULT_WAIT_S:g} seconds")
        client = get_client(request)
        try:
            value = await client.result(_run_id(run_id), timeout=wait)
        except RunNotFoundError:
            raise HTTPException(404, f"no run {run_id!r}") from None
        except ResultTimeoutError:
            return JSONResponse({"run_id": run_id, "status": "running"}, status_code=202)
        except (WorkflowFailedError, RunCancelled) as exc:
            status = "cancelled" if isinstance(exc, RunCancelled) else "failed"
            body = {"run_id": run_id, "status": status, "error": _reason(exc)}
            return JSONResponse(body, status_code=409)
        return JSONResponse({"run_id": run_id, "status": "completed", "result": page_view(value)})

    @api.post("/runs/{run_id}/cancel", status_code=202)
    async def cancel_run(run_id: str, request: Request) -> dict[str, str]:
        try:
            await get_client(request).cancel(_run_id(run_id), reason="cancelled over HTTP")
        except RunNotFoundError:
            raise HTTPException(404, f"no run {run_id!r}") from None
        return {"run_id": run_id, "status": "cancelling"}

    readers = _Readers(MAX_STREAM_READERS)

    @api.get("/runs/{run_id}/streams/{name}", response_model=None)
    async def follow_stream(
        run_id: str, name: str, request: Request, start: int | None = None
    ) -> StreamingResponse:
        client = get_client(request)
        position = _start(start, request.headers.get("last-event-id"))
        stream_name = _stream_name(name)
        if not await client.exists(_run_id(run_id)):
            raise HTTPException(404, f"no run {run_id!r}")
        if not readers.take():
            raise HTTPException(503, "too many streams are being read here; try again later")
        chunks = client.stream(run_id, stream_name, start=position)
        return StreamingResponse(
            _server_sent(chunks, readers),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    api.include_router(webhook_router(secret=webhook_secret))

    @api.post("/hooks/{token}", status_code=202)
    async def resume_hook(token: str, request: Request) -> dict[str, str]:
        return await _resume(request, token, await _json_body(request), "hook")

    return api


async def _json_body(request: Request) -> Any:
    """The request's JSON, bounded in bytes and nesting; None for an empty body."""
    raw = await _bounded_body(request)
    return _parse_json(raw) if raw else None


async def _bounded_body(request: Request) -> bytes:
    """The request's body, refused (413) once it passes MAX_BODY_BYTES."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > MAX_BODY_BYTES):
        raise HTTPException(413, f"the body is limited to {MAX_BODY_BYTES} bytes")
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_BODY_BYTES:
            raise HTTPException(413, f"the body is limited to {MAX_BODY_BYTES} bytes")
    return bytes(raw)


def _parse_json(raw: bytes) -> Any:
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):
        raise HTTPException(400, "the body is not JSON") from None
    if json_depth(value) > MAX_NESTING:
        raise HTTPException(400, f"the body is nested deeper than {MAX_NESTING} levels")
    return value


def _run_id(run_id: str) -> str:
    try:
        return check_run_id(run_id)
    except InvalidArgumentError as exc:
        raise HTTPException(400, str(exc)) from None


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:1000]


class _Readers:
    """How many SSE streams this router serves at once: each holds a request open."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open = 0

    def take(self) -> bool:
        if self.open >= self.limit:
            return False
        self.open += 1
        return True

    def give_back(self) -> None:
        self.open -= 1


def _start(start: int | None, last_event_id: str | None) -> int:
    """Where to begin: after the client's ``Last-Event-ID`` (a reconnect), else ``start``."""
    if last_event_id is not None:
        text = last_event_id.strip()
        if not text.isdigit() or len(text) > 15:
            raise HTTPException(400, "Last-Event-ID must be a chunk index this endpoint sent")
        return int(text) + 1
    try:
        return check_position(0 if start is None else start)
    except InvalidArgumentError:
        raise HTTPException(400, "start must be an integer >= 0") from None


def _stream_name(name: str) -> str:
    try:
        return check_output_name(name)
    except InvalidArgumentError as exc:
        raise HTTPException(400, str(exc)) from None


def _event(kind: str, data: Any, index: int | None = None) -> str:
    head = f"id: {index}\n" if index is not None else ""
    return f"{head}event: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


async def _server_sent(chunks: AsyncIterator[Chunk], readers: _Readers) -> AsyncIterator[str]:
    """The stream as server-sent events: ``chunk`` events with ids, then ``end`` (or ``error``).

    A comment line every ``SSE_KEEPALIVE_S`` while nothing is written keeps proxies
    from closing an idle connection. A browser's ``EventSource`` reconnects with
    ``Last-Event-ID`` and so resumes after the last chunk it got.
    """
    pending: asyncio.Future[Chunk] | None = None
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(anext(chunks))
            done, _ = await asyncio.wait({pending}, timeout=SSE_KEEPALIVE_S)
            if not done:
                yield ": keep-alive\n\n"
                continue
            finished, pending = pending, None
            try:
                chunk = finished.result()
            except StopAsyncIteration:
                yield _event("end", {})
                return
            except LedgerflowError as exc:
                yield _event("error", {"error": _reason(exc)})
                return
            view = {
                "value": page_view(chunk.value),
                "step": chunk.step,
                "attempt": chunk.attempt,
                "restarted": chunk.restarted,
            }
            yield _event("chunk", view, chunk.index)
    finally:
        readers.give_back()
        if pending is not None:
            pending.cancel()
            await asyncio.gather(pending, return_exceptions=True)
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None:
            await aclose()


def webhook_router(*, secret: str | None = None) -> APIRouter:
    """``POST``/``PUT``/``PATCH /webhooks/{token}``: resume an ``lf.create_webhook()`` hook.

    The hook receives ``{"method", "headers", "query", "json", "body"}``: ``json`` the
    parsed body if it is JSON (else None), ``body`` the raw bytes otherwise. Headers that
    carry credentials (``authorization``, ``cookie``, the signature) are left out: the
    payload is recorded in the run's log. With ``secret`` (or ``LEDGERFLOW_WEBHOOK_SECRET``
    when None), a call must carry ``X-Ledgerflow-Signature: sha256=<hex HMAC-SHA256 of the
    body>``: missing or wrong is 401. A token that is not a live webhook's is 404. Either
    way nothing is recorded.
    """
    key = (secret if secret is not None else os.environ.get(SECRET_ENV, "")).encode()
    api = APIRouter()

    @api.api_route("/webhooks/{token}", methods=["POST", "PUT", "PATCH"], status_code=202)
    async def receive(token: str, request: Request) -> dict[str, str]:
        if not WEBHOOK_TOKEN_RE.match(token):
            raise HTTPException(404, "no live webhook with that token")
        raw = await _bounded_body(request)
        if key:
            sent = request.headers.get(SIGNATURE_HEADER, "")
            wanted = "sha256=" + hmac.new(key, raw, hashlib.sha256).hexdigest()
            if not hmac.compare_digest(sent.encode(), wanted.encode()):
                raise HTTPException(401, f"missing or wrong {SIGNATURE_HEADER}")
        payload: dict[str, Any] = {
            "method": request.method,
            "headers": _kept_headers(request),
            "query": dict(list(request.query_params.items())[:MAX_HEADERS]),
            "json": None,
            "body": None,
        }
        try:
            payload["json"] = _parse_json(raw) if raw else None
        except HTTPException:
            payload["body"] = bytes(raw)
        return await _resume(request, token, payload, "webhook")

    return api


async def _resume(request: Request, token: str, payload: Any, kind: str) -> dict[str, str]:
    """Deliver ``payload`` to the live hook holding ``token``; 404 if none does."""
    try:
        run_id = await get_client(request).resume_hook(token, payload)
    except (HookNotFoundError, InvalidArgumentError):
        raise HTTPException(404, f"no live {kind} with that token") from None
    return {"run_id": run_id}


def _kept_headers(request: Request) -> dict[str, str]:
    kept: dict[str, str] = {}
    for name, value in request.headers.items():
        if name in DROPPED_HEADERS or len(kept) >= MAX_HEADERS:
            continue
        kept[name] = value[:MAX_HEADER_VALUE]
    return kept
