"""Workflows the dashboard tests run: parallel steps to draw, a failure to filter on."""

from __future__ import annotations

import asyncio

import ledgerflow as lf

PARALLEL_SECONDS = 0.4


@lf.step(name="db_nap")
async def nap(label: str, seconds: float) -> str:
    await asyncio.sleep(seconds)
    return label


@lf.step(name="db_fail", retry=lf.RetryPolicy(max_attempts=1))
async def fail(message: str) -> None:
    raise RuntimeError(message)


@lf.workflow(name="db_parallel")
async def parallel(note: str) -> list[str]:
    """Three steps at once (s1-s3, overlapping bars), then one after them (s4)."""
    fanned = await asyncio.gather(*(nap(x, PARALLEL_SECONDS) for x in ("a", "b", "c")))
    last = await nap(note, 0.01)
    return [*fanned, last]


@lf.workflow(name="db_failing")
async def failing(message: str) -> None:
    await fail(message)
