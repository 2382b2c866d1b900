"""Make non-replayable reads fail loudly inside workflow code.

While a workflow's loop runs (and only on that thread), the clock, blocking
sleep and unseeded randomness raise NonDeterminismError naming the call and
its replay-safe replacement; everywhere else in the process they behave as
usual. ``datetime.datetime.now()`` cannot be intercepted without replacing the
class (which would break ``isinstance`` across the process): use ``lf.now()``.

The guards are installed by whoever is about to run workflow code (a starting
scheduler, ``history.replay``), never by importing a module: a process that
only imports ledgerflow (a producer, a web app holding a ``Client``) keeps its
``time.monotonic`` untouched. Installs are counted, and the last ``uninstall``
puts the originals back (see there for why that is safe).
"""

from __future__ import annotations

import random
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from ledgerflow.eventlog.errors import NonDeterminismError

_active_thread: int | None = None
_installs = 0
_patched: list[tuple[Any, str, Callable[..., Any], Callable[..., Any]]] = []
"""(module, name, original, guard) of each function the guards replaced."""

_GUARDS: list[tuple[Any, str, str, str]] = [
    (time, "time", "time.time()", "use lf.now()"),
    (time, "time_ns", "time.time_ns()", "use lf.now()"),
    (time, "monotonic", "time.monotonic()", "use lf.now()"),
    (time, "perf_counter", "time.perf_counter()", "use lf.now()"),
    (time, "sleep", "time.sleep()", "use `await lf.sleep(...)`"),
    (random, "random", "random.random()", "use lf.random()"),
    (uuid, "uuid4", "uuid.uuid4()", "use lf.uuid4()"),
]


_EXEMPT_CALLERS = frozenset({"logging"})
"""Modules whose own reads of the clock are not workflow code's: the standard library's
logging stamps every record with time.time(), and a record can be made on the workflow's
thread while its code runs (a garbage-collected task of the process's own event loop
reporting its exception, say); refusing it would lose that log line."""


def _guard(original: Callable[..., Any], call: str, instead: str) -> Callable[..., Any]:
    get_ident = threading.get_ident

    def guarded(*args: Any, **kwargs: Any) -> Any:
        if (
            _active_thread is not None
            and _active_thread == get_ident()
            and sys._getframe(1).f_globals.get("__name__") not in _EXEMPT_CALLERS
        ):
            raise NonDeterminismError(
                f"{call} is not allowed inside workflow code: its value would differ on "
                f"replay; {instead}"
            )
        return original(*args, **kwargs)

    guarded.__wrapped__ = original  # type: ignore[attr-defined]
    guarded.__name__ = getattr(original, "__name__", call)
    return guarded


def install() -> None:
    """Wrap the guarded functions, unless already wrapped; each call needs one ``uninstall``."""
    global _installs
    if _installs == 0:
        for module, name, call, instead in _GUARDS:
            original = getattr(module, name)
            guard = _guard(original, call, instead)
            _patched.append((module, name, original, guard))
            setattr(module, name, guard)
    _installs += 1


def uninstall() -> None:
    """Undo one ``install``; the last one puts back every function that is still our guard.

    Safe: with no installer left, no thread is marked as running workflow code,
    so a guard anyone still holds (code that ran ``from time import monotonic``
    meanwhile) behaves exactly as the original. A function replaced after ours
    (a test's monkeypatch, a time-freezing library) is left as its replacer set it.
    """
    global _installs
    if _installs <= 0:
        raise RuntimeError("sandbox.uninstall() without a matching install()")
    _installs -= 1
    if _installs:
        return
    for module, name, original, guard in reversed(_patched):
        if getattr(module, name) is guard:
            setattr(module, name, original)
    _patched.clear()


def is_installed() -> bool:
    return _installs > 0


@contextmanager
def installed() -> Iterator[None]:
    """The guards for the duration of the block (for replays outside a scheduler)."""
    install()
    try:
        yield
    finally:
        uninstall()


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
