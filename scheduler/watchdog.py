"""Interrupt workflow code that runs too long without awaiting.

A scheduler runs the workflow code of every run it activates on one thread,
one ready callback at a time. Code that never yields (a busy loop, a huge
computation that belongs in a step, an input that sends it down a pathological
path) would hold up every other run of that scheduler indefinitely. So while
workflow code runs, an interval timer is armed; when it fires, the signal
handler raises :class:`WorkflowStalledError` inside that code, which fails the
run with a clear reason (and code that swallows it is interrupted again at the
next interval, with an error logged each time).

Signals reach only the main thread, so the watchdog is active only when
workflow code runs there (as in every ledgerflow process); elsewhere it does
nothing. It is process-wide state, so it is installed explicitly by whoever
drives workflow code (``install``), never as a side effect of an import.
"""

from __future__ import annotations

import asyncio.events
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

import structlog
from ledgerflow.eventlog.errors import WorkflowStalledError

log = structlog.get_logger("ledgerflow.watchdog")

DEFAULT_BUDGET = 5.0
"""Seconds workflow code may run without awaiting. Generous: real workflow code
awaits within microseconds; anything near this belongs in a step."""

_budget: float | None = None
_installs = 0
_armed = False
_fired = 0
# Frames of the loop that drives workflow code, not workflow code itself: an alarm
# landing there is left for the next interval rather than raised between two
# callbacks, where it would escape the workflow and fail the activation instead.
_DRIVER_FILES = frozenset({__file__.replace("watchdog.py", "loop.py"), asyncio.events.__file__})


def install(budget: float = DEFAULT_BUDGET) -> bool:
    """Take SIGALRM for the watchdog; False (and no watchdog) off the main thread.

    Counted: each install needs an ``uninstall``, so two schedulers in one process
    (tests, ``--with-scheduler``) do not switch it off for each other.
    """
    global _budget, _installs
    if budget <= 0:
        raise ValueError(f"the workflow code budget must be positive, not {budget}")
    if threading.current_thread() is not threading.main_thread():
        return False
    if _installs == 0:
        signal.signal(signal.SIGALRM, _on_alarm)
    _installs += 1
    _budget = budget if _budget is None else min(_budget, budget)
    return True


def uninstall() -> None:
    global _budget, _installs
    if _installs == 0 or threading.current_thread() is not threading.main_thread():
        return
    _installs -= 1
    if _installs == 0:
        _budget = None
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, signal.SIG_DFL)


def _on_alarm(signum: int, frame: FrameType | None) -> None:
    global _fired
    if not _armed or _budget is None:
        return
    if frame is not None and frame.f_code.co_filename in _DRIVER_FILES:
        return
    _fired += 1
    where = f"{frame.f_code.co_filename}:{frame.f_lineno}" if frame is not None else "?"
    if _fired > 1:
        log.error(
            "workflow code swallowed the stall error and is still running",
            at=where,
            times=_fired,
        )
    raise WorkflowStalledError(
        f"workflow code ran for more than {_budget:g} s without awaiting (at {where}); "
        "a scheduler runs every run's workflow code on one thread, so do heavy or long "
        "work in a step"
    )


@contextmanager
def watching() -> Iterator[None]:
    """Arm the timer for the block (re-firing every budget while it runs)."""
    global _armed, _fired
    budget = _budget
    if budget is None or _armed or threading.current_thread() is not threading.main_thread():
        yield
        return
    _armed, _fired = True, 0
    signal.setitimer(signal.ITIMER_REAL, budget, budget)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        _armed = False
