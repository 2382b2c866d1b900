"""Steps longer than RabbitMQ's consumer timeout (issue 11, item 10).

RabbitMQ 3.10 closes a consumer's channel when a delivery stays unacked past
``consumer_timeout`` and redelivers what it held: another attempt of a step
that is still running. These tests lower the server's timeout at runtime
(restored afterwards) and show that a worker holding messages at most
``ack_after`` seconds runs a step longer than that timeout exactly once, hands
back a message that waits behind it without costing an attempt, and that the
reconciler recovers such a step when its worker dies after letting the
message go.

3.10 reads ``consumer_timeout`` when a channel opens (observed: a channel
opened before a change keeps its old value), and checks it every
``channel_tick_interval`` (60 s by default), so the timeout is lowered only
while the worker's consumer channel opens, and the tick for the test.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from ledgerflow.eventlog.events import Event, EventType
from ledgerflow.scheduler.reconciler import Reconciler
from ledgerflow.worker.service import Worker
from structlog.testing import capture_logs

import ledgerflow as lf
from ledgerflow.ops.lease import Lease
from tests.apps import arith, flaky
from tests.integration.test_worker_failures import wait_for_events
from tests.outages import rabbit_env_changed
from tests.processes import ROOT, cli_env
from tests.servers import Servers

pytestmark = pytest.mark.integration

SERVER_TIMEOUT_MS = 3000
TICK_MS = 500
RELEASED = "step message released before its steps finished; the log covers them"
HANDED_BACK = "step message waited for a free slot too long; handed back"
CHANNEL_CLOSED = "consumer channel closed; it will be reopened"


def starts(events: list[Event]) -> list[int]:
    return [int(e.data["attempt"]) for e in events if e.type is EventType.STEP_STARTED]


@contextlib.asynccontextmanager
async def worker_under_short_timeout(backends: Any, **options: Any) -> AsyncIterator[Worker]:
    """A worker whose consumer channel RabbitMQ times out after SERVER_TIMEOUT_MS."""
    worker = Worker(backends.store, backends.broker, queues=["default"], **options)
    with rabbit_env_changed(channel_tick_interval=TICK_MS):
        with rabbit_env_changed(consumer_timeout=SERVER_TIMEOUT_MS):
            await worker.start()
        try:
            yield worker
        finally:
            await worker.stop(grace=10)


async def test_without_a_hold_limit_the_server_redelivers_and_the_consumer_comes_back(
    backends: Any, scheduling: lf.Client, namespace: str
) -> None:
    """The failure mode (and the check that the lowered timeout bites): a second attempt."""
    label = f"{namespace}:test:held"
    with capture_logs() as logs:
        async with worker_under_short_timeout(backends, concurrency=2, ack_after=600):
            run = await scheduling.start(flaky.one, "slow", label, 6.0)
            assert await run.result(timeout=60) == "slept 6.0"
            # The channel was reopened: the same consumer serves the next step.
            after = await scheduling.start(flaky.one, "slow", f"{label}:after", 0.1)
            assert await after.result(timeout=30) == "slept 0.1"
    closed = [line for line in logs if line["event"] == CHANNEL_CLOSED]
    assert closed and "timed out" in closed[0]["reason"]
    assert starts(await scheduling.events(run.run_id))[:2] == [1, 2]


async def test_a_step_longer_than_the_consumer_timeout_runs_once(
    backends: Any, scheduling: lf.Client, namespace: str
) -> None:
    label = f"{namespace}:test:long"
    with capture_logs() as logs:
        async with worker_under_short_timeout(backends, concurrency=1, ack_after=1.0):
            long = await scheduling.start(flaky.one, "slow", label, 7.0)
            await wait_for_events(scheduling, long.run_id, lambda ev: bool(starts(ev)))
            # Waits behind the long step: delivered once the long one is released,
            # then handed back every hold limit until the slot frees.
            behind = await scheduling.start(flaky.one, "slow", f"{label}:behind", 0.1)
            assert await long.result(timeout=60) == "slept 7.0"
            assert await behind.result(timeout=30) == "slept 0.1"
            later = await scheduling.start(flaky.one, "slow", f"{label}:later", 0.1)
            assert await later.result(timeout=30) == "slept 0.1"
    assert starts(await scheduling.events(long.run_id)) == [1]  # never redelivered
    assert starts(await scheduling.events(behind.run_id)) == [1]  # the waits cost no attempt
    assert starts(await scheduling.events(later.run_id)) == [1]
    events = [line["event"] for line in logs]
    assert RELEASED in events
    assert HANDED_BACK in events
    assert CHANNEL_CLOSED not in events  # the server never had to time the channel out


@contextlib.contextmanager
def worker_process(servers: Servers, namespace: str, *flags: str) -> Iterator[WorkerProcess]:
    """A `ledgerflow worker` subprocess logging at info to a file the test reads; killed after."""
    with tempfile.TemporaryDirectory(prefix=f"lf-{namespace}-") as folder:
        log_path = Path(folder) / "worker.log"
        env = {**cli_env(servers, namespace), "LEDGERFLOW_LOG_LEVEL": "info"}
        with open(log_path, "wb") as log_file:
            proc = subprocess.Popen(
                [sys.executable, "-m", "ledgerflow", "worker", *flags],
                env=env,
                cwd=ROOT,
                stdout=subprocess.DEVNULL,
                stderr=log_file,
            )
        try:
            yield WorkerProcess(proc, log_path)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()


class WorkerProcess:
    def __init__(self, proc: subprocess.Popen[bytes], log_path: Path) -> None:
        self.proc = proc
        self.log_path = log_path

    async def wait_logged(self, event: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while event not in self.log_path.read_text(errors="replace"):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise AssertionError(f"the worker did not log {event!r}")
            await asyncio.sleep(0.1)


async def test_a_released_step_whose_worker_is_killed_is_recovered_by_the_reconciler(
    servers: Servers, backends: Any, scheduling: lf.Client, namespace: str
) -> None:
    flags = ["tests.apps.arith", "--queues", "default", "--concurrency", "1", "--ack-after", "1"]
    with worker_process(servers, namespace, *flags) as first:
        run = await scheduling.start(arith.slow_once_wf, 600.0)  # attempt 1 never ends
        await wait_for_events(scheduling, run.run_id, lambda ev: starts(ev) == [1])
        await first.wait_logged(RELEASED)
        first.proc.send_signal(signal.SIGKILL)
        await asyncio.to_thread(first.proc.wait, 30)
    reconciler = Reconciler(
        backends.store,
        backends.broker,
        Lease(backends.store.client, backends.names, owner="long-steps", ttl_ms=2000),
        stale_after=0.5,
        interval=0.2,
    )
    worker = Worker(backends.store, backends.broker, queues=["default"])
    await worker.start()
    task = asyncio.create_task(reconciler.run())
    try:
        # Nothing is redelivered (the message was acked): the reconciler sees the
        # worker's presence mark expire and sends attempt 2.
        assert await run.result(timeout=60) == "attempt 2"
    finally:
        reconciler.stop()
        await asyncio.wait_for(task, 10)
        await worker.stop(grace=5)
    assert reconciler.recoveries["step's worker is gone"] == 1
    events = await scheduling.events(run.run_id)
    assert starts(events) == [1, 2]
    workers = [e.data["worker"] for e in events if e.type is EventType.STEP_STARTED]
    assert workers[0] != workers[1]


async def test_a_batch_released_early_runs_each_step_once(
    backends: Any, scheduling: lf.Client, namespace: str
) -> None:
    """Steps of a released batch that had not started yet still run here, once each."""
    label = f"{namespace}:test:batch"
    worker = Worker(
        backends.store, backends.broker, queues=["default"], concurrency=1, ack_after=1.0
    )
    await worker.start()
    try:
        with capture_logs() as logs:
            run = await scheduling.start(flaky.many_slow, label, 3, 2.0)
            assert await run.result(timeout=60) == ["slept 2.0"] * 3
    finally:
        await worker.stop(grace=10)
    events = await scheduling.events(run.run_id)
    assert sorted(starts(events)) == [1, 1, 1]
    released = [line for line in logs if line["event"] == RELEASED]
    assert released and released[0]["steps"] == 3 and released[0]["started"] == 1
