"""Workers and schedulers as separate OS processes, driven through the CLI."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from typing import Any

import pytest
from ledgerflow.eventlog.events import EventType

import ledgerflow as lf
from tests.apps import arith
from tests.processes import cli, processes
from tests.servers import Servers

pytestmark = pytest.mark.integration

APP = "tests.apps.arith"


async def test_cli_worker_and_scheduler_processes_run_a_workflow(
    servers: Servers, backends: Any
) -> None:
    ns = backends.names.namespace
    with processes(servers, ns, [["worker", APP, "--concurrency", "4"], ["scheduler", APP]]):
        started = await asyncio.to_thread(
            cli, servers, ns, "start", f"{APP}:total", "--args", "[5]", "--wait", "--timeout", "60"
        )
        assert started.returncode == 0, started.stderr
        run_id, result = started.stdout.split()
        assert json.loads(result) == arith.expected_total(5)

        shown = await asyncio.to_thread(cli, servers, ns, "runs", "show", run_id)
        assert shown.returncode == 0, shown.stderr
        assert "status completed" in shown.stdout
        assert shown.stdout.count("step_completed") == 10
        assert "run_completed" in shown.stdout

        dumped = await asyncio.to_thread(cli, servers, ns, "runs", "events", run_id, "--json")
        assert dumped.returncode == 0, dumped.stderr
        events = [json.loads(line) for line in dumped.stdout.splitlines()]
        assert events[0]["type"] == "run_created"
        assert events[-1]["type"] == "run_completed"
        assert events[-1]["data"]["result"] == arith.expected_total(5)
        assert all({"id", "type", "corr", "ts", "v", "data"} <= set(e) for e in events)


async def test_cli_errors_are_clear(servers: Servers, backends: Any) -> None:
    ns = backends.names.namespace
    unknown = await asyncio.to_thread(cli, servers, ns, "start", f"{APP}:nope")
    assert unknown.returncode == 2
    assert "defines no workflow 'nope'" in unknown.stderr
    missing = await asyncio.to_thread(cli, servers, ns, "runs", "show", "no-such-run")
    assert missing.returncode == 4
    assert "does not exist" in missing.stderr
    bad_json = await asyncio.to_thread(cli, servers, ns, "start", f"{APP}:total", "--args", "[1")
    assert bad_json.returncode != 0
    assert "--args is not valid JSON" in bad_json.stderr


async def test_two_schedulers_three_workers_two_hundred_runs(
    servers: Servers, backends: Any
) -> None:
    """Every run completes with the right result; no step is recorded twice."""
    ns = backends.names.namespace
    commands = [["scheduler", APP], ["scheduler", APP]] + [
        ["worker", APP, "--concurrency", "8"] for _ in range(3)
    ]
    client = lf.Client(backends.store, backends.broker)
    with processes(servers, ns, commands):
        runs = await asyncio.gather(*(client.start(arith.fan_chain, 4, 3) for _ in range(200)))
        results = await asyncio.wait_for(
            asyncio.gather(*(run.result(timeout=240) for run in runs)), timeout=250
        )
    assert results == [arith.expected_fan_chain(4, 3)] * 200
    workers_seen: set[str] = set()
    for run in runs:
        events = await client.events(run.run_id)
        completed = Counter(e.corr for e in events if e.type is EventType.STEP_COMPLETED)
        assert len(completed) == 7, run.run_id
        assert max(completed.values()) == 1, f"{run.run_id}: a step completed twice"
        created = Counter(e.corr for e in events if e.type is EventType.STEP_CREATED)
        assert max(created.values()) == 1, f"{run.run_id}: a step created twice"
        assert sum(e.type is EventType.RUN_COMPLETED for e in events) == 1
        workers_seen |= {e.data["worker"] for e in events if e.type is EventType.STEP_STARTED}
    assert len(workers_seen) == 3, workers_seen


async def test_worker_with_scheduler_runs_both_roles_in_one_process(
    servers: Servers, backends: Any
) -> None:
    ns = backends.names.namespace
    client = lf.Client(backends.store, backends.broker)
    with processes(servers, ns, [["worker", APP, "--with-scheduler"]]):
        run = await client.start(arith.total, 6)
        assert await run.result(timeout=60) == arith.expected_total(6)
