"""The dashboard's web app: a JSON API over ``queries`` and the static page that uses it.

The page is plain HTML and JavaScript served from ``static/`` (no build step).
It renders every value with ``textContent``, never as markup, and the
Content-Security-Policy below allows no inline script at all, so a payload
that contains HTML cannot run in the browser of whoever looks at it.

Every request passes ``guard`` first (see ``access``): a Host header naming
another site is refused (DNS rebinding), ``/api`` wants the bearer token when
one is set, and a POST must be a same-origin JSON request. No GET changes
anything: the one route with an effect (reading the dead queue takes and
returns its messages) is ``POST /api/dlq``.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Final

from fastapi import FastAPI, HTTPException, Query, Request, Response
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from ledgerflow.broker import Broker
from ledgerflow.eventlog.errors import InvalidArgumentError
from ledgerflow.eventlog.names import check_run_id
from ledgerflow.eventlog.store import RunLog

from . import queries
from .access import Access
from .jsonsafe import JsonValue

MAX_LIST: Final = 1000
"""Most runs one listing returns: a page, never the whole index."""

STATIC: Final = Path(__file__).parent / "static"

SECURITY_HEADERS: Final = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

MAX_BODY: Final = 1024
"""A POST body is a few options; anything longer is refused unread."""

JSON_TYPE: Final = "application/json"


def create_app(store: RunLog, broker: Broker, access: Access | None = None) -> FastAPI:
    """The app over connected backends; whoever created them closes them.

    ``access`` defaults to loopback Host names and no token. Responses are JSON
    values already (see ``queries``), so no response models: FastAPI would only
    validate them again.
    """
    rules = access if access is not None else Access()
    app = FastAPI(title="ledgerflow dashboard", docs_url=None, redoc_url=None, openapi_url=None)

    @app.middleware("http")
    async def guard(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        refused = _refusal(rules, request)
        response = refused if refused is not None else await call_next(request)
        response.headers.update(SECURITY_HEADERS)
        return response

    @app.exception_handler(ValueError)
    async def bad_request(request: Request, exc: ValueError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=400)

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/api/runs", response_model=None)
    async def runs(
        status: Annotated[str | None, Query(max_length=64)] = None,
        workflow: Annotated[str | None, Query(max_length=1000)] = None,
        limit: Annotated[int, Query(ge=1, le=MAX_LIST)] = 100,
    ) -> dict[str, JsonValue]:
        found = await queries.list_runs(
            store, status=status or None, workflow=workflow or None, limit=limit
        )
        return {"runs": list[JsonValue](found), "statuses": list(queries.RUN_STATUSES)}

    @app.get("/api/runs/{run_id}", response_model=None)
    async def run(run_id: str) -> dict[str, JsonValue]:
        try:
            check_run_id(run_id)
        except InvalidArgumentError as exc:
            raise HTTPException(status_code=400, detail=str(exc)) from None
        detail = await queries.run_detail(store, run_id)
        if detail is None:
            raise HTTPException(status_code=404, detail=f"no run {run_id!r}")
        return detail

    @app.post("/api/dlq", response_model=None)
    async def dlq(request: Request) -> dict[str, JsonValue]:
        """A POST because looking takes every message off the dead queue and puts it back."""
        options = await _json_body(request)
        limit = options.get("limit", 100)
        if not isinstance(limit, int) or isinstance(limit, bool):
            raise ValueError(f"limit must be an integer, got {limit!r}")
        return await queries.dead_letters(broker, limit=limit)

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def _refusal(rules: Access, request: Request) -> Response | None:
    """The response that refuses ``request``, or None to let it through."""
    if not rules.host_allowed(request.headers.get("host")):
        return JSONResponse(
            {"detail": "this dashboard does not answer to that Host name (--allowed-host)"},
            status_code=400,
        )
    if not request.url.path.startswith("/api"):
        return None
    if not rules.token_accepted(request.headers.get("authorization")):
        return JSONResponse(
            {"detail": "a bearer token is required (LEDGERFLOW_DASHBOARD_TOKEN)"},
            status_code=401,
            headers={"WWW-Authenticate": "Bearer"},
        )
    if request.method not in ("GET", "HEAD") and not rules.origin_allowed(
        request.headers.get("origin")
    ):
        return JSONResponse({"detail": "cross-origin request refused"}, status_code=403)
    return None


async def _json_body(request: Request) -> dict[str, object]:
    """A small JSON object body; any other content type is refused (a form cannot send JSON)."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type != JSON_TYPE:
        raise HTTPException(status_code=415, detail=f"send the options as {JSON_TYPE}")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY:
            raise HTTPException(status_code=413, detail=f"body over {MAX_BODY} bytes")
    try:
        options = json.loads(body or b"{}")
    except (ValueError, RecursionError):
        raise ValueError("the body is not valid JSON") from None
    if not isinstance(options, dict):
        raise ValueError("the body must be a JSON object")
    return options
