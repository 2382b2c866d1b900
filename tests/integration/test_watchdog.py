"""Workflow code that never awaits fails its own run and holds up no other run.

The stalling runs are driven by scheduler subprocesses: if the watchdog ever
regressed, a busy loop would freeze that process, not the test's event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from ledgerflow.scheduler import watchdog
from ledgerflow.scheduler.client import Client
from ledgerflow.scheduler.service import Scheduler

import ledgerflow as lf
from tests.apps import arith, stalling
from tests.processes import processes
from tests.servers import Servers

pytestmark = pytest.mark.integration

APPS = "tests.apps.stalling"


@pytest.fixture
def fleet(servers: Servers, backends: Any) -> Iterator[None]:
    """A worker and a scheduler whose workflow code may run 0.3 s without awaiting."""
    commands = [
        ["worker", APPS, "--concurrency", "4"],
        ["scheduler", APPS, "--stall-budget", "0.3"],
    ]
    with processes(servers, backends.names.namespace, commands):
        yield


@pytest.fixture
async def client(backends: Any, fleet: None) -> AsyncIterator[Client]:
    yield Client(backends.store, backends.broker)


async def test_a_busy_loop_fails_its_run_and_other_runs_complete(client: Client) -> None:
    stuck = await client.start(stalling.spin, True)
    others = [await client.start(arith.total, 3) for _ in range(3)]
    with pytest.raises(lf.WorkflowFailedError) as failed:
        await stuck.result(timeout=30)
    assert failed.value.type_name.endswith("WorkflowStalledError")
    assert "without awaiting" in failed.value.message
    for run in others:
        assert await run.result(timeout=30) == arith.expected_total(3)
    fine = await client.start(stalling.spin, False)
    assert await fine.result(timeout=30) == 1


async def test_code_that_swallows_the_error_is_interrupted_again(client: Client) -> None:
    run = await client.start(stalling.stubborn)
    assert await run.result(timeout=30) == "gave up after 3"


async def test_the_watchdog_is_off_once_every_scheduler_stopped(backends: Any) -> None:
    first = Scheduler(backends.store, backends.broker, stall_budget=0.3)
    second = Scheduler(backends.store, backends.broker, stall_budget=0.3)
    await first.start()
    await second.start()
    await first.stop()
    assert watchdog._installs == 1  # the other one still needs it
    await second.stop()
    assert watchdog._installs == 0
    await asyncio.sleep(0.4)  # no alarm is left armed to fire into the test


def test_a_bad_budget_is_refused() -> None:
    with pytest.raises(ValueError, match="positive"):
        watchdog.install(0)
