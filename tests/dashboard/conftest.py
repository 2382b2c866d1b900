"""A dashboard server on a free port over the test's own namespace, and runs to show in it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest

import ledgerflow as lf
from ledgerflow.dashboard.access import Access
from ledgerflow.dashboard.app import create_app
from ledgerflow.dashboard.server import DashboardServer
from tests.apps import dashboard as apps

# Markup in a payload: the page must show it as text and never run it.
MARKUP = '<img src=x onerror="window.__xss=1"><script>window.__xss=2</script>'


@pytest.fixture
async def dashboard(backends: Any) -> AsyncIterator[str]:
    """The base URL of a dashboard serving this test's namespace."""
    server = DashboardServer(create_app(backends.store, backends.broker), port=0)
    await server.start()
    try:
        yield server.url
    finally:
        await server.stop()


TOKEN = "t0ken-for-the-dashboard-tests"


@pytest.fixture
async def serve_dashboard(backends: Any) -> AsyncIterator[Callable[[Access], Awaitable[str]]]:
    """Start dashboards with given access rules; each returns its base URL; all stop after."""
    servers: list[DashboardServer] = []

    async def serve(access: Access) -> str:
        server = DashboardServer(create_app(backends.store, backends.broker, access), port=0)
        await server.start()
        servers.append(server)
        return server.url

    try:
        yield serve
    finally:
        for server in servers:
            await server.stop()


@dataclass(frozen=True)
class Runs:
    parallel: str
    failing: str


@pytest.fixture
async def finished_runs(running: Any) -> Runs:
    """One completed run with parallel steps (and markup in its payloads), one failed run."""
    parallel = await running.start(apps.parallel, MARKUP)
    failing = await running.start(apps.failing, f"it broke: {MARKUP}")
    assert await parallel.result(timeout=30) == ["a", "b", "c", MARKUP]
    with pytest.raises(lf.WorkflowFailedError):
        await failing.result(timeout=30)
    return Runs(parallel=parallel.run_id, failing=failing.run_id)


GARBAGE = b"\xc1 not msgpack <b>bold</b>"


@pytest.fixture
async def garbage_dead_letter(running: Any, backends: Any) -> str:
    """A malformed activation, dead-lettered by the real scheduler; returns its message id."""
    message_id = "garbage-for-the-dashboard"
    await backends.broker.publish(backends.names.runs_queue, GARBAGE, message_id=message_id)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 15
    while await backends.broker.queue_depth(backends.names.dead_queue) < 1:
        assert loop.time() < deadline, "the scheduler did not dead-letter the garbage message"
        await asyncio.sleep(0.05)
    return message_id
