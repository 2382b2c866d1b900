"""The dashboard's web app: a JSON API over ``queries`` and the static page that uses it.

The page is plain HTML and JavaScript served from ``static/`` (no build step).
It renders every value with ``textContent``, never as markup, and the
Content-Security-Policy below allows no inline script at all, so a payload
that contains HTML cannot run in the browser of whoever looks at it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Final

from fastapi import FastAPI, HTTPException, Query, Request, Response
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from broker import Broker
from eventlog.store import EventStore

from . import queries
from .jsonsafe import JsonValue

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


def create_app(store: EventStore, broker: Broker) -> FastAPI:
    """The app over connected backends; whoever created them closes them.

    Responses are JSON values already (see ``queries``), so no response models:
    FastAPI would only validate them again.
    """
    app = FastAPI(title="ledgerflow dashboard", docs_url=None, redoc_url=None, openapi_url=None)

    @app.middleware("http")
    async def security_headers(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        response = await call_next(request)
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
        status: Annotated[str | None, Query()] = None,
        workflow: Annotated[str | None, Query()] = None,
        limit: Annotated[int, Query()] = 100,
    ) -> dict[str, JsonValue]:
        found = await queries.list_runs(
            store, status=status or None, workflow=workflow or None, limit=limit
        )
        return {"runs": list[JsonValue](found), "statuses": list(queries.RUN_STATUSES)}

    @app.get("/api/runs/{run_id}", response_model=None)
    async def run(run_id: str) -> dict[str, JsonValue]:
        detail = await queries.run_detail(store, run_id)
        if detail is None:
            raise HTTPException(status_code=404, detail=f"no run {run_id!r}")
        return detail

    @app.get("/api/dlq", response_model=None)
    async def dlq(limit: Annotated[int, Query()] = 100) -> dict[str, JsonValue]:
        return await queries.dead_letters(broker, limit=limit)

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app
