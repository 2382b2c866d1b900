"""``ledgerflow.testing.fleet`` and ``.namespace``: the harness users run their own tests with."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from ledgerflow.eventlog.names import Names

import ledgerflow as lf
from ledgerflow.testing.fleet import Fleet, cli_env
from ledgerflow.testing.namespace import count_redis_keys, delete_namespace
from tests.apps import arith
from tests.processes import ROOT
from tests.servers import Servers

pytestmark = pytest.mark.integration

APP = "tests.apps.arith"


async def test_a_fleet_runs_a_workflow_stops_cleanly_and_the_namespace_is_deleted(
    servers: Servers, backends: Any, tmp_path: Path
) -> None:
    names: Names = backends.names
    env = cli_env(servers.amqp_url, servers.redis_url, names.namespace, pythonpath=ROOT)
    fleet = Fleet(env, tmp_path, cwd=ROOT, stop_timeout=20.0)
    worker = fleet.add("worker", ["worker", APP, "--concurrency", "4"])
    fleet.add("scheduler", ["scheduler", APP])
    assert [p.name for p in fleet.procs] == ["worker-0", "scheduler-0"]
    fleet.start_all()
    try:
        ready = await fleet.wait_until_consuming(
            servers.amqp_url, {names.step_queue(): 1, names.runs_queue: 1}
        )
        assert ready < 60
        client = lf.Client(backends.store, backends.broker)
        run = await client.start(arith.total, 5)
        assert await run.result(timeout=60) == arith.expected_total(5)
        assert fleet.reap() == []

        restarted = await fleet.kill_and_restart(worker, 0.1)
        assert restarted.startswith("worker-0 (pid ")
        assert worker.starts == 2 and worker.alive
    finally:
        stopped = fleet.stop_all()
    assert [s.name for s in stopped] == ["worker-0", "scheduler-0"]
    assert all(s.clean for s in stopped), stopped
    assert all(s.returncode in (0, -signal.SIGTERM) for s in stopped)
    assert "--- fleet: restart 1 ---" in worker.log_text()
    assert set(fleet.log_lines()) == {"worker-0", "scheduler-0"}

    deleted = await delete_namespace(servers.amqp_url, servers.redis_url, names.namespace)
    assert deleted.redis_keys > 0
    assert deleted.queues >= 3 and deleted.exchanges == 2
    assert deleted.redis_keys_left == 0 and deleted.errors == ()
    client_ = aioredis.Redis.from_url(servers.redis_url)
    try:
        assert await count_redis_keys(client_, names) == 0
    finally:
        await client_.aclose()


async def test_a_process_that_exits_fails_the_readiness_wait_with_its_log(
    servers: Servers, namespace: str, tmp_path: Path
) -> None:
    env = cli_env(servers.amqp_url, servers.redis_url, namespace, pythonpath=ROOT)
    fleet = Fleet(env, tmp_path, cwd=ROOT)
    fleet.add("worker", ["worker", "tests.apps.no_such_module"])
    fleet.start_all()
    try:
        with pytest.raises(RuntimeError, match=r"(?s)worker-0 exited with 2:.*no_such_module"):
            await fleet.wait_until_consuming(servers.amqp_url, {"unused": 1}, timeout=30)
    finally:
        fleet.stop_all()


async def test_best_effort_cleanup_reports_an_unreachable_server_and_cleans_the_other(
    servers: Servers, namespace: str
) -> None:
    deleted = await delete_namespace(
        "amqp://guest:guest@127.0.0.1:1/", servers.redis_url, namespace, best_effort=True
    )
    assert deleted.queues == 0 and deleted.redis_keys_left == 0
    assert len(deleted.errors) == 1 and deleted.errors[0].startswith("rabbitmq: ")
    # ledgerflow's own error for an unreachable server: the URL redacted, what to do.
    with pytest.raises(lf.ServiceUnavailableError, match="cannot connect to RabbitMQ"):
        await delete_namespace("amqp://guest:guest@127.0.0.1:1/", servers.redis_url, namespace)
