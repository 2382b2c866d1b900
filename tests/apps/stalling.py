"""Workflows whose code never awaits, for the scheduler's watchdog tests."""

from __future__ import annotations

import ledgerflow as lf
from tests.apps import arith  # noqa: F401  (its workflows run beside these)


@lf.step(name="st_echo")
async def echo(value: int) -> int:
    return value


@lf.workflow(name="st_spin")
async def spin(forever: bool) -> int:
    """A busy loop in workflow code: what an unlucky input can send code into."""
    first = await echo(1)
    while forever:
        pass
    return first


@lf.workflow(name="st_stubborn")
async def stubborn() -> str:
    """Swallows the stall error twice before giving up: interrupted each time."""
    caught = 0
    while True:
        try:
            while True:
                pass
        except lf.WorkflowStalledError:
            caught += 1
            if caught == 3:
                return f"gave up after {caught}"
