"""A delayed start and a workflow timeout survive every process being killed and restarted.

Real worker and scheduler processes (``Fleet``): both runs are under way (the start
wait and the deadline recorded), every process is SIGKILLed, the due times pass
while nothing runs, and the restarted fleet still starts the one on time and fails
the other at its deadline: both live only in the log and Redis's timer index.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from ledgerflow.eventlog.events import EventType

import ledgerflow as lf
from ledgerflow.testing.fleet import Fleet, cli_env
from tests.apps import later
from tests.processes import ROOT
from tests.servers import Servers

pytestmark = pytest.mark.integration

APP = "tests.apps.later"


async def recorded(client: lf.Client, run_id: str, kind: EventType, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not any(e.type is kind for e in await client.events(run_id)):
        assert time.monotonic() < deadline, f"{run_id} never recorded {kind.value}"
        await asyncio.sleep(0.1)


async def test_a_delayed_start_and_a_timeout_survive_a_restart_of_every_process(
    servers: Servers, backends: Any, tmp_path: Path
) -> None:
    names = backends.names
    env = cli_env(servers.amqp_url, servers.redis_url, names.namespace, pythonpath=ROOT)
    fleet = Fleet(env, tmp_path, cwd=ROOT, stop_timeout=20.0)
    fleet.add("worker", ["worker", APP])
    fleet.add("scheduler", ["scheduler", APP])
    fleet.start_all()
    try:
        await fleet.wait_until_consuming(
            servers.amqp_url, {names.step_queue(): 1, names.runs_queue: 1}
        )
        client = lf.Client(backends.store, backends.broker)
        asked = int(time.time() * 1000)
        delayed = await client.start(later.stamped, delay=4.0)
        bounded = await client.start(later.sleeps_past_deadline, 600.0)
        await recorded(client, delayed.run_id, EventType.WAIT_CREATED)
        await recorded(client, bounded.run_id, EventType.WAIT_CREATED)
        for proc in fleet.procs:
            await fleet.kill(proc)
        await asyncio.sleep(4.5)  # both due times pass while nothing runs
        for proc in fleet.procs:
            fleet.spawn(proc)
        assert await delayed.result(timeout=90) >= asked + 4000
        with pytest.raises(lf.WorkflowTimeoutError, match="within its timeout of 2 s"):
            await bounded.result(timeout=90)
        assert fleet.reap() == []
    finally:
        fleet.stop_all()
