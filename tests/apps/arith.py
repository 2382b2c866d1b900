"""Workflows and steps the integration tests run, in-process and in CLI subprocesses."""

from __future__ import annotations

import asyncio

import ledgerflow as lf


@lf.step(name="it_add")
async def add(x: int, y: int) -> int:
    return x + y


@lf.step(name="it_slow_add")
async def slow_add(x: int, y: int) -> int:
    await asyncio.sleep(0.005)
    return x + y


@lf.step(name="it_boom", retry=lf.RetryPolicy(max_attempts=1))
async def boom(message: str) -> None:
    raise RuntimeError(message)


@lf.workflow(name="it_total")
async def total(n: int) -> int:
    parts = await asyncio.gather(*(add(i, i) for i in range(n)))
    acc = 0
    for part in parts:
        acc = await add(acc, part)
    return acc


def expected_total(n: int) -> int:
    return sum(2 * i for i in range(n))


@lf.workflow(name="it_fan_chain")
async def fan_chain(width: int, depth: int) -> int:
    """A fan-out of `width`, then a chain of `depth`: the concurrency test's shape."""
    parts = await asyncio.gather(*(slow_add(i, 1) for i in range(width)))
    acc = sum(parts)
    for i in range(depth):
        acc = await slow_add(acc, i)
    return acc


def expected_fan_chain(width: int, depth: int) -> int:
    return sum(i + 1 for i in range(width)) + sum(range(depth))


@lf.workflow(name="it_failing")
async def failing(message: str) -> None:
    await boom(message)


@lf.workflow(name="it_recovering")
async def recovering(message: str) -> str:
    try:
        await boom(message)
    except lf.StepFailedError as exc:
        return f"recovered from {exc.type_name}: {exc.message}"
    return "not reached"


@lf.step(name="it_tick", retry=lf.RetryPolicy(max_attempts=10, initial=0.2, max_interval=2.0))
async def tick(acc: int, i: int) -> int:
    await asyncio.sleep(0.05)
    return acc + i


@lf.workflow(name="it_long_chain")
async def long_chain(n: int) -> int:
    """n sequential steps of ~50 ms: long enough to be interrupted mid-run."""
    acc = 0
    for i in range(n):
        acc = await tick(acc, i)
    return acc


@lf.step(name="it_slow_once", retry=lf.RetryPolicy(max_attempts=5))
async def slow_once(seconds: float) -> str:
    """Attempt 1 is slow; later attempts (re-dispatched while it still runs) are quick."""
    if lf.step_context().attempt == 1:
        await asyncio.sleep(seconds)
    return f"attempt {lf.step_context().attempt}"


@lf.workflow(name="it_slow_once_wf")
async def slow_once_wf(seconds: float) -> str:
    return await slow_once(seconds)


# Invocations of it_counted, by argument: tests of which steps a batch re-runs.
COUNTED: dict[int, int] = {}


@lf.step(name="it_counted")
async def counted(i: int) -> int:
    COUNTED[i] = COUNTED.get(i, 0) + 1
    return i * 10


@lf.step(name="it_napping")
async def napping(seconds: float) -> float:
    await asyncio.sleep(seconds)
    return seconds


@lf.workflow(name="it_wide")
async def wide(n: int) -> int:
    return sum(await asyncio.gather(*(add(i, 0) for i in range(n))))


@lf.workflow(name="it_chain")
async def chain(n: int) -> int:
    acc = 0
    for _ in range(n):
        acc = await add(acc, 1)
    return acc


@lf.workflow(name="it_nap")
async def nap(seconds: float) -> float:
    return await napping(seconds)


@lf.step(name="it_slow_first_time")
async def slow_first_time(seconds: float) -> int:
    """Hangs on its first attempt (for killing the process running it), quick after."""
    attempt = lf.step_context().attempt
    if attempt == 1:
        await asyncio.sleep(seconds)
    return attempt


@lf.workflow(name="it_slow_first_run")
async def slow_first_run(seconds: float) -> int:
    return await slow_first_time(seconds)
