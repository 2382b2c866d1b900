"""The router's server-sent-events endpoint on real servers: live, resumable, bounded.

The live case runs uvicorn on a loopback port, since httpx's ASGI transport hands
back a response only once it is complete; the rest go through that transport.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

import ledgerflow as lf
import ledgerflow.fastapi as lf_fastapi
from ledgerflow.fastapi import lifespan, router
from tests.apps import streams as st
from tests.servers import Servers

pytestmark = pytest.mark.integration


def app_for(servers: Servers, namespace: str) -> FastAPI:
    opened = lifespan(amqp_url=servers.amqp_url, redis_url=servers.redis_url, namespace=namespace)
    app = FastAPI(lifespan=opened)
    app.include_router(router(workflows=[st.chat]), prefix="/lf")
    return app


@pytest.fixture
async def api(
    servers: Servers, namespace: str, running: lf.Client
) -> AsyncIterator[httpx.AsyncClient]:
    app = app_for(servers, namespace)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            yield http


def parse(body: str) -> list[dict[str, Any]]:
    """Server-sent events as dicts: id, event, data (decoded JSON); comments skipped."""
    events = []
    for block in body.strip().split("\n\n"):
        fields: dict[str, Any] = {}
        for line in block.splitlines():
            if line.startswith(":"):
                continue
            key, _, value = line.partition(": ")
            fields[key] = json.loads(value) if key == "data" else value
        if fields:
            events.append(fields)
    return events


async def test_a_finished_runs_stream_is_served_whole_and_resumes_after_last_event_id(
    api: httpx.AsyncClient, running: lf.Client
) -> None:
    run = await running.start(st.chat, 4)
    assert await run.result(timeout=20) == 4
    whole = await api.get(f"/lf/runs/{run.run_id}/streams/tokens")
    assert whole.status_code == 200
    assert whole.headers["content-type"].startswith("text/event-stream")
    events = parse(whole.text)
    assert [(e.get("id"), e["event"]) for e in events] == [
        ("0", "chunk"),
        ("1", "chunk"),
        ("2", "chunk"),
        ("3", "chunk"),
        (None, "end"),
    ]
    assert events[0]["data"] == {"value": "t0", "step": "s1", "attempt": 1, "restarted": False}
    resumed = await api.get(f"/lf/runs/{run.run_id}/streams/tokens", headers={"Last-Event-ID": "1"})
    assert [e.get("id") for e in parse(resumed.text)] == ["2", "3", None]
    tail = await api.get(f"/lf/runs/{run.run_id}/streams/tokens", params={"start": 3})
    assert [e.get("id") for e in parse(tail.text)] == ["3", None]


@pytest.mark.parametrize(
    ("path", "headers", "status"),
    [
        ("/lf/runs/no-such-run/streams/tokens", {}, 404),
        ("/lf/runs/no-such-run/streams/bad%20name", {}, 400),
        ("/lf/runs/bad%7Cid/streams/tokens", {}, 400),
        ("/lf/runs/no-such-run/streams/tokens?start=-1", {}, 400),
        ("/lf/runs/no-such-run/streams/tokens?start=x", {}, 422),
        ("/lf/runs/no-such-run/streams/tokens", {"Last-Event-ID": "1; drop"}, 400),
        ("/lf/runs/no-such-run/streams/tokens", {"Last-Event-ID": "9" * 40}, 400),
    ],
)
async def test_bad_requests_get_a_status_and_no_stream(
    api: httpx.AsyncClient, path: str, headers: dict[str, str], status: int
) -> None:
    answer = await api.get(path, headers=headers)
    assert answer.status_code == status, answer.text
    assert "text/event-stream" not in answer.headers.get("content-type", "")


async def test_readers_past_the_limit_are_turned_away(
    api: httpx.AsyncClient,
    running: lf.Client,
    monkeypatch: pytest.MonkeyPatch,
    servers: Servers,
    namespace: str,
) -> None:
    monkeypatch.setattr(lf_fastapi, "MAX_STREAM_READERS", 0)
    app = app_for(servers, namespace)
    run = await running.start(st.chat, 1)
    await run.result(timeout=20)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            answer = await http.get(f"/lf/runs/{run.run_id}/streams/tokens")
    assert answer.status_code == 503


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def test_a_live_run_streams_over_http_as_it_is_written(
    servers: Servers, namespace: str, running: lf.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(lf_fastapi, "SSE_KEEPALIVE_S", 0.2)
    port = free_port()
    config = uvicorn.Config(
        app_for(servers, namespace), host="127.0.0.1", port=port, log_level="warning"
    )
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve())
    st.GATES["http"] = asyncio.Event()
    try:
        deadline = asyncio.get_running_loop().time() + 30
        while not server.started:  # uvicorn offers a flag, not an event
            assert asyncio.get_running_loop().time() < deadline, "uvicorn did not start"
            await asyncio.sleep(0.05)
        run = await running.start(st.chat, 3, "http")
        url = f"http://127.0.0.1:{port}/lf/runs/{run.run_id}/streams/tokens"
        async with httpx.AsyncClient(timeout=30) as http, http.stream("GET", url) as answer:
            lines = answer.aiter_lines()
            first = await asyncio.wait_for(anext(lines), 10)
            while first in (": keep-alive", ""):  # a slow machine: the chunk came later
                first = await asyncio.wait_for(anext(lines), 10)
            assert first == "id: 0"
            assert await anext(lines) == "event: chunk"
            assert json.loads((await anext(lines)).removeprefix("data: "))["value"] == "t0"
            assert await anext(lines) == ""
            # The step holds: nothing is written, so the connection is kept alive.
            assert await asyncio.wait_for(anext(lines), 10) == ": keep-alive"
            st.GATES["http"].set()
            rest = "\n".join([line async for line in lines])
        assert [e.get("id") for e in parse(rest)] == ["1", "2", None]
        assert parse(rest)[-1]["event"] == "end"
    finally:
        st.GATES["http"].set()
        server.should_exit = True
        await asyncio.wait_for(serving, 30)
