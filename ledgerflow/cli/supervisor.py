"""Process-level knobs of the CLI: which event loop runs, and ``worker --processes N``.

One Python process tops out at one core, and a worker spends most of its CPU
in the AMQP and Redis clients; ``--processes N`` is the supported way to use
N cores on one host without an outside process manager. The parent only
supervises: it starts N copies of the same command, forwards SIGTERM/SIGINT so
each child drains gracefully, and replaces a child that dies unexpectedly
(with a growing delay, so a child that cannot start does not spin).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import signal
import sys
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

import structlog

log = structlog.get_logger("ledgerflow.supervisor")

LOOPS = ("auto", "asyncio", "uvloop")
RESTART_DELAY_MIN = 0.5
RESTART_DELAY_MAX = 30.0
STABLE_AFTER = 30.0  # a child that ran this long resets its restart delay


def run_with_loop(main: Coroutine[Any, Any, int], loop: str) -> int:
    """Run ``main`` on uvloop when asked, or when installed and not refused ("auto")."""
    factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    if loop == "uvloop" or (loop == "auto" and importlib.util.find_spec("uvloop") is not None):
        try:
            import uvloop
        except ImportError as exc:
            main.close()
            raise SystemExit(f"ledgerflow: --loop uvloop needs uvloop installed: {exc}") from exc
        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)


def child_argv(argv: Sequence[str]) -> list[str]:
    """The same command line without ``--processes`` (the children are single processes)."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg == "--processes":
            skip = True
            continue
        if arg.startswith("--processes="):
            continue
        out.append(arg)
    return out


async def supervise(argv: Sequence[str], processes: int) -> int:
    """Run ``processes`` children of ``ledgerflow <argv>`` until SIGTERM/SIGINT.

    Returns 0 if every child ended well.
    """
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    command = [sys.executable, "-m", "ledgerflow", *child_argv(argv)]
    children: dict[int, asyncio.subprocess.Process] = {}
    delays = dict.fromkeys(range(processes), RESTART_DELAY_MIN)

    async def keep(slot: int) -> int:
        while True:
            began = time.monotonic()
            # A session of its own: a terminal's Ctrl-C reaches the parent alone, which
            # then stops each child once (a second signal would abort its drain).
            child = await asyncio.create_subprocess_exec(*command, start_new_session=True)
            children[slot] = child
            log.info("child started", slot=slot, pid=child.pid)
            if stopping.is_set():
                with contextlib.suppress(ProcessLookupError):
                    child.send_signal(signal.SIGTERM)
            code = await child.wait()
            if stopping.is_set():
                return code
            if time.monotonic() - began > STABLE_AFTER:
                delays[slot] = RESTART_DELAY_MIN
            log.warning("child exited; restarting", slot=slot, code=code, delay=delays[slot])
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), delays[slot])
            if stopping.is_set():
                return code
            delays[slot] = min(delays[slot] * 2, RESTART_DELAY_MAX)

    keepers = [asyncio.create_task(keep(slot)) for slot in range(processes)]
    try:
        await stopping.wait()
        for child in children.values():
            if child.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    child.send_signal(signal.SIGTERM)
        codes = await asyncio.gather(*keepers)
    finally:
        for task in keepers:
            task.cancel()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
    # A child stopped by our SIGTERM exits 0 after draining (or dies of it, if it was
    # still starting and had no handler yet); anything else is worth a 1.
    return 0 if all(code in (0, -signal.SIGTERM) for code in codes) else 1
