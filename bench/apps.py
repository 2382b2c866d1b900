"""The workflows and steps the benchmark runs (the APP its worker and scheduler import).

Steps do no work on purpose: every figure then measures ledgerflow's own cost
(log appends, confirmed publishes, replay), not the step's. Every name is
explicit and prefixed ``bench_`` so it can never collide with an application's.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

import ledgerflow as lf

MANY_WIDTH = 10


@lf.step(name="bench_noop")
async def noop(i: int) -> int:
    """A trivial parallel step: returns its argument."""
    return i


@lf.step(name="bench_inc")
async def inc(acc: int) -> int:
    """A trivial sequential step: each call depends on the previous result."""
    return acc + 1


@lf.workflow(name="bench_fanout")
async def fanout(n: int) -> int:
    """One run fanning out ``n`` parallel steps: measures throughput."""
    parts = await asyncio.gather(*(noop(i) for i in range(n)))
    return sum(parts)


@lf.workflow(name="bench_chain")
async def chain(n: int) -> int:
    """``n`` sequential steps: measures per-step latency and replay cost on long runs."""
    acc = 0
    for _ in range(n):
        acc = await inc(acc)
    return acc


@lf.workflow(name="bench_many")
async def many(width: int = MANY_WIDTH) -> int:
    """The "many runs" shape: a small fan-out, started hundreds of times at once."""
    parts = await asyncio.gather(*(noop(i) for i in range(width)))
    return sum(parts)


@lf.workflow(name="bench_waves")
async def waves(count: int, width: int) -> int:
    """``count`` waves of ``width`` parallel steps, one after another: a very long run
    whose live state stays small, for watching memory over hundreds of thousands of steps."""
    total = 0
    for _ in range(count):
        total += sum(await asyncio.gather(*(noop(i) for i in range(width))))
    return total


@lf.workflow(name="bench_sleeper")
async def sleeper(seconds: float) -> float:
    """A durable sleep and nothing else: measures timer precision."""
    await lf.sleep(seconds)
    return seconds


STORAGE_STEPS = 10


@lf.step(name="bench_payload")
async def payload(i: int, size: int) -> bytes:
    """A result of ``size`` bytes, distinct per ``i`` (so offloaded results are not shared)."""
    return (i.to_bytes(4, "big") * (size // 4 + 1))[:size]


@lf.workflow(name="bench_storage")
async def storage(size: int) -> int:
    """``STORAGE_STEPS`` sequential steps with results of ``size`` bytes: the storage figures."""
    total = 0
    for i in range(STORAGE_STEPS):
        total += len(await payload(i, size))
    return total


RETENTION_SECONDS = 2


@lf.workflow(name="bench_short", retention=timedelta(seconds=RETENTION_SECONDS))
async def short(i: int) -> int:
    """One step, kept ``RETENTION_SECONDS`` after it ends: the stream of short runs whose
    Redis memory must stay flat once retention removes them as fast as they come."""
    return int(await inc(i))
