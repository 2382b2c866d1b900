"""Steps with resources, and a log of every open and close, for tests of lf.resource."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import ledgerflow as lf

EVENTS: list[tuple[str, str]] = []
"""(what, resource) in order: ("open", "rs_pool"), ("close", "rs_pool"), ..."""
FAIL_OPENS: dict[str, int] = {}
"""Resource name -> how many more opens fail (a database down for a moment)."""


@lf.resource(name="rs_pool")
async def pool() -> AsyncIterator[dict[str, int]]:
    """Worker-scoped: opened once per worker, closed when it stops."""
    EVENTS.append(("open", "rs_pool"))
    try:
        yield {"connections": 4}
    finally:
        EVENTS.append(("close", "rs_pool"))


@lf.resource(name="rs_session", scope="attempt")
@asynccontextmanager
async def session() -> AsyncIterator[list[str]]:
    """Attempt-scoped, from an async context manager factory."""
    if FAIL_OPENS.get("rs_session", 0) > 0:
        FAIL_OPENS["rs_session"] -= 1
        raise ConnectionError("database is restarting")
    EVENTS.append(("open", "rs_session"))
    try:
        yield []
    finally:
        EVENTS.append(("close", "rs_session"))


@lf.step(name="rs_lookup")
async def lookup(key: str, db: dict[str, int] = lf.use(pool)) -> str:
    return f"{key}:{db['connections']}"


@lf.step(name="rs_flaky", retry=lf.RetryPolicy(max_attempts=3, initial=0.05))
async def flaky(key: str, tx: list[str] = lf.use(session)) -> str:
    attempt = lf.step_context().attempt
    if attempt == 1:
        raise RuntimeError("first attempt fails")
    return f"{key} on attempt {attempt}"


@lf.step(name="rs_slow", timeout=0.3, retry=lf.RetryPolicy(max_attempts=1))
async def slow(seconds: float, tx: list[str] = lf.use(session)) -> float:
    await asyncio.sleep(seconds)
    return seconds


@lf.step(name="rs_both")
async def both(
    seconds: float, db: dict[str, int] = lf.use(pool), tx: list[str] = lf.use(session)
) -> float:
    await asyncio.sleep(seconds)
    return seconds


@lf.workflow(name="rs_lookups")
async def lookups(keys: list[str]) -> list[str]:
    return list(await asyncio.gather(*(lookup(k) for k in keys)))


@lf.workflow(name="rs_flaky_wf")
async def flaky_wf(key: str) -> str:
    return await flaky(key)


@lf.workflow(name="rs_slow_wf")
async def slow_wf(seconds: float) -> float:
    return await slow(seconds)


@lf.workflow(name="rs_both_wf")
async def both_wf(seconds: float) -> Any:
    return await both(seconds)
