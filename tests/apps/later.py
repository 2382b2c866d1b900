"""Workflows with a delayed start, a deadline and sleep_until, for tests of scheduler/later.py."""

from __future__ import annotations

import asyncio
import datetime as dt
import time

import ledgerflow as lf

TOLD: list[str] = []
"""Run ids whose long step saw ``cancelled`` after its run timed out (in-process workers)."""


@lf.step
async def stamp() -> int:
    """When the step ran (epoch ms): the test compares it with the start time asked for."""
    return int(time.time() * 1000)


@lf.workflow
async def stamped() -> int:
    return await stamp()


@lf.step
async def patient(seconds: float) -> bool:
    """Runs for ``seconds`` unless told its run is over."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        ctx = lf.step_context()
        if ctx.cancelled:
            TOLD.append(ctx.run_id)
            return False
        await asyncio.sleep(0.05)
    return True


@lf.workflow
async def napping_child(seconds: float) -> None:
    await lf.sleep(seconds)


@lf.workflow(timeout=dt.timedelta(seconds=1))
async def bounded(step_seconds: float, child_seconds: float) -> str:
    await asyncio.gather(patient(step_seconds), napping_child(child_seconds))
    return "finished in time"


@lf.workflow(timeout=30)
async def quick_enough() -> str:
    await lf.sleep(0.1)
    return "ok"


@lf.workflow(timeout=2)
async def sleeps_past_deadline(seconds: float) -> None:
    await lf.sleep(seconds)


@lf.workflow
async def wake_at(epoch_ms: int) -> int:
    await lf.sleep_until(dt.datetime.fromtimestamp(epoch_ms / 1000, tz=dt.UTC))
    return int(lf.now().timestamp() * 1000)
