"""The replay sandbox is installed by a starting scheduler, never by an import."""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from pathlib import Path

import pytest
from ledgerflow.eventlog.errors import NonDeterminismError
from ledgerflow.scheduler import sandbox

from .helpers import stack

ROOT = Path(__file__).resolve().parents[2]


def test_importing_ledgerflow_leaves_the_clock_untouched() -> None:
    # A fresh interpreter: this one has run schedulers already.
    code = (
        "import time, random, uuid\n"
        "before = (time.time, time.monotonic, time.perf_counter, time.sleep, random.random,"
        " uuid.uuid4)\n"
        "import ledgerflow, ledgerflow.scheduler, ledgerflow.scheduler.loop\n"
        "import ledgerflow.scheduler.replay, ledgerflow.scheduler.history, ledgerflow.worker\n"
        "after = (time.time, time.monotonic, time.perf_counter, time.sleep, random.random,"
        " uuid.uuid4)\n"
        "assert all(a is b for a, b in zip(before, after, strict=True)), after\n"
        "assert not hasattr(time.monotonic, '__wrapped__')\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)


async def test_a_started_scheduler_installs_the_sandbox_and_stopping_removes_it() -> None:
    original = time.monotonic
    assert not sandbox.is_installed()
    async with stack(run_worker=False, run_scheduler=False) as s:
        assert time.monotonic is original
        await s.scheduler.start()
        assert sandbox.is_installed()
        assert time.monotonic is not original
        assert time.monotonic.__wrapped__ is original  # type: ignore[attr-defined]
        time.monotonic()  # outside workflow code the guard is the clock
    assert not sandbox.is_installed()
    assert time.monotonic is original


async def test_two_schedulers_keep_it_until_the_last_stops() -> None:
    original = time.monotonic
    async with stack(run_worker=False) as first, stack(run_worker=False) as second:
        await first.scheduler.stop()
        assert time.monotonic is not original  # the second still replays workflow code
        await second.scheduler.stop()
        assert time.monotonic is original


def test_a_function_replaced_while_installed_is_left_to_its_replacer() -> None:
    original = time.perf_counter

    def replacement() -> float:
        return 1.0

    sandbox.install()
    try:
        time.perf_counter = replacement
    finally:
        sandbox.uninstall()
    try:
        assert time.perf_counter is replacement
    finally:
        time.perf_counter = original


def test_logging_may_read_the_clock_while_workflow_code_runs() -> None:
    """A record made on the workflow's thread (a finalizer reporting a lost exception,
    say) is stamped, not refused; workflow code itself still may not read the clock."""
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger = logging.getLogger("ledgerflow.tests.sandbox")
    handler = Keep()
    logger.addHandler(handler)
    try:
        with sandbox.installed(), sandbox.workflow_code():
            logger.error("reported from the workflow's thread")
            with pytest.raises(NonDeterminismError, match=r"time\.time\(\)"):
                time.time()
    finally:
        logger.removeHandler(handler)
    assert [r.getMessage() for r in records] == ["reported from the workflow's thread"]
    assert records[0].created > 0
