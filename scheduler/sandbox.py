"""Make non-replayable reads fail loudly inside workflow code.

While a workflow's loop runs (and only on that thread), the clock, blocking
sleep and unseeded randomness raise NonDeterminismError naming the call and
its replay-safe replacement; everywhere else in the process they behave as
usual. ``datetime.datetime.now()`` cannot be intercepted without replacing the
class (which would break ``isinstance`` across the process): use ``lf.now()``.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from ledgerflow.eventlog.errors import NonDeterminismError

_active_thread: int | None = None
_installed = False

_GUARDS: list[tuple[Any, str, str, str]] = [
    (time, "time", "time.time()", "use lf.now()"),
    (time, "time_ns", "time.time_ns()", "use lf.now()"),
    (time, "monotonic", "time.monotonic()", "use lf.now()"),
    (time, "perf_counter", "time.perf_counter()", "use lf.now()"),
    (time, "sleep", "time.sleep()", "use `await lf.sleep(...)`"),
    (random, "random", "random.random()", "use lf.random()"),
    (uuid, "uuid4", "uuid.uuid4()", "use lf.uuid4()"),
]


def _guard(original: Callable[..., Any], call: str, instead: str) -> Callable[..., Any]:
    get_ident = threading.get_ident

    def guarded(*args: Any, **kwargs: Any) -> Any:
        if _active_thread is not None and _active_thread == get_ident():
            raise NonDeterminismError(
                f"{call} is not allowed inside workflow code: its value would differ on "
                f"replay; {instead}"
            )
        return original(*args, **kwargs)

    guarded.__wrapped__ = original  # type: ignore[attr-defined]
    guarded.__name__ = getattr(original, "__name__", call)
    return guarded


def install() -> None:
    """Wrap the guarded functions once per process (idempotent)."""
    global _installed
    if _installed:
        return
    for module, name, call, instead in _GUARDS:
        setattr(module, name, _guard(getattr(module, name), call, instead))
    _installed = True


@contextmanager
def workflow_code() -> Iterator[None]:
    """Mark this thread as running workflow code for the duration of the block."""
    global _active_thread
    previous = _active_thread
    _active_thread = threading.get_ident()
    try:
        yield
    finally:
        _active_thread = previous
