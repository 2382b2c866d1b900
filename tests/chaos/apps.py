"""The chaos workflows: fan-out, chain, sleep and retry, with results the driver can compute.

Every name is explicit and prefixed ``chaos_`` so the worker and scheduler
subprocesses (which import this module as their APP) and the driver agree,
and nothing collides with the other test apps.

Steps take a few tens of milliseconds so that a kill, a purge or a broker
restart usually finds work in flight. Their retry policy is fast and allows
many attempts: under chaos a step legitimately burns attempts without failing
(every redelivery after a killed worker or a broker restart counts as one), and
the suite is about losing or duplicating nothing, not about exhausting retries.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ledgerflow.scheduler.registry import WorkflowFunction

import ledgerflow as lf

STEP_SECONDS = 0.05
# The reconciler re-sends a started step with no outcome after twice its time
# limit, and that is the only way back for a step whose message is lost after
# step_started was recorded (requeued by a broker restart, then purged). With
# no limit it would wait 2 x 600 s, so the chaos steps carry a short one.
STEP_TIMEOUT = 3.0
CHAOS_RETRY = lf.RetryPolicy(max_attempts=12, initial=0.1, backoff=1.5, max_interval=1.0)
SHAPES = ("fanout", "chain", "sleep", "retry")


@lf.step(name="chaos_add", retry=CHAOS_RETRY, timeout=STEP_TIMEOUT)
async def add(x: int, y: int) -> int:
    await asyncio.sleep(STEP_SECONDS)
    return x + y


@lf.step(name="chaos_square", retry=CHAOS_RETRY, timeout=STEP_TIMEOUT)
async def square(x: int) -> int:
    await asyncio.sleep(STEP_SECONDS)
    return x * x


@lf.step(name="chaos_fails_first", retry=CHAOS_RETRY, timeout=STEP_TIMEOUT)
async def fails_first(x: int) -> int:
    """Fails its first attempt, always: every retry run records a step_retrying.

    Keyed on the attempt number, not on a counter, so the outcome is the same
    whichever worker runs it and however often it is redelivered.
    """
    await asyncio.sleep(STEP_SECONDS)
    if lf.step_context().attempt == 1:
        raise ConnectionError(f"chaos: attempt 1 of {x} always fails")
    return 3 * x


@lf.workflow(name="chaos_fanout")
async def fanout(width: int, base: int) -> int:
    """``width`` steps at once, then one step over their sum."""
    squares = await asyncio.gather(*(square(base + i) for i in range(width)))
    return int(await add(sum(squares), 1))


@lf.workflow(name="chaos_chain")
async def chain(length: int, base: int) -> int:
    """``length`` steps, each waiting for the one before."""
    acc = base
    for i in range(length):
        acc = int(await add(acc, i))
    return acc


@lf.workflow(name="chaos_sleep")
async def sleeper(seconds: float, base: int) -> int:
    """A step, a durable sleep, a step: the wake-up must survive every fault."""
    first = int(await add(base, 1))
    await lf.sleep(seconds)
    return int(await add(first, 1))


@lf.workflow(name="chaos_retry")
async def retry(base: int) -> int:
    """A step that fails once and is retried through the timer index, then one more."""
    tripled = int(await fails_first(base))
    return int(await add(tripled, 1))


WORKFLOWS: dict[str, WorkflowFunction[..., int]] = {
    "fanout": fanout,
    "chain": chain,
    "sleep": sleeper,
    "retry": retry,
}


@dataclass(frozen=True)
class Plan:
    """One run the driver starts: its shape, arguments and the result it must end with."""

    shape: str
    args: tuple[Any, ...]
    expected: int

    @property
    def workflow(self) -> str:
        return WORKFLOWS[self.shape].name


def expected(shape: str, args: Sequence[Any]) -> int:
    """What a run of ``shape`` with ``args`` returns, computed without running it."""
    if shape == "fanout":
        width, base = args
        return int(sum((base + i) ** 2 for i in range(width)) + 1)
    if shape == "chain":
        length, base = args
        return int(base + sum(range(length)))
    if shape == "sleep":
        _, base = args
        return int(base) + 2
    if shape == "retry":
        (base,) = args
        return 3 * int(base) + 1
    raise ValueError(f"unknown chaos shape {shape!r}")


def plan(shape: str, args: tuple[Any, ...]) -> Plan:
    return Plan(shape, args, expected(shape, args))
