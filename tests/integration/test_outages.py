"""Broker restarts, killed Redis connections, a Redis crash: runs still complete (issue 3)."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from ledgerflow.broker import REASON_HEADER
from ledgerflow.eventlog.events import Event, EventType
from ledgerflow.eventlog.names import Names
from ledgerflow.eventlog.settings import Settings
from ledgerflow.worker.backend import connect
from redis.exceptions import OutOfMemoryError

import ledgerflow as lf
from tests.apps import arith, flaky
from tests.conftest import delete_namespace_queues
from tests.outages import free_port, rabbitmq_app_stopped, wait_port
from tests.processes import processes
from tests.servers import Servers

pytestmark = pytest.mark.integration

APP = "tests.apps.arith"
# Deployed as in production: whatever an outage cuts between two writes, it repairs.
RECONCILER = ["reconciler", "--stale-after", "2", "--interval", "0.5", "--lease-ttl", "3"]


def assert_clean(events: list[Event]) -> None:
    completed = Counter(e.corr for e in events if e.type is EventType.STEP_COMPLETED)
    assert max(completed.values()) == 1, "a step completed twice"
    assert sum(e.type is EventType.RUN_COMPLETED for e in events) == 1


async def consuming(broker: Any, queues: list[str], timeout: float = 60.0) -> None:
    """Until each queue has a consumer (the processes have connected and subscribed)."""
    deadline = time.monotonic() + timeout
    while True:
        infos = [await broker.queue_info(queue) for queue in queues]
        if all(info.consumers > 0 for info in infos):
            return
        assert time.monotonic() < deadline, f"no consumer within {timeout} s: {infos}"
        await asyncio.sleep(0.2)


async def test_runs_complete_through_a_rabbitmq_restart(servers: Servers, backends: Any) -> None:
    ns = backends.names.namespace
    client = lf.Client(backends.store, backends.broker)
    commands = [["scheduler", APP], ["worker", APP, "--concurrency", "8"], RECONCILER]
    with processes(servers, ns, commands):
        runs = [await client.start(arith.long_chain, 40) for _ in range(10)]
        # Stopping RabbitMQ before a process has connected tests its start-up, not this.
        await consuming(backends.broker, [backends.names.runs_queue, backends.names.step_queue()])
        await asyncio.sleep(1.0)
        with rabbitmq_app_stopped():
            await asyncio.sleep(3.0)
        results = await asyncio.gather(*(r.result(timeout=180) for r in runs))
    assert results == [sum(range(40))] * 10
    for run in runs:
        assert_clean(await client.events(run.run_id))


async def test_runs_complete_when_redis_connections_are_killed(
    servers: Servers, backends: Any, redis_client: aioredis.Redis
) -> None:
    ns = backends.names.namespace
    client = lf.Client(backends.store, backends.broker)
    commands = [["scheduler", APP], ["worker", APP, "--concurrency", "8"], RECONCILER]
    with processes(servers, ns, commands):
        runs = [await client.start(arith.long_chain, 40) for _ in range(10)]
        killed = 0
        for _ in range(5):
            await asyncio.sleep(0.4)
            killed += int(await redis_client.execute_command("CLIENT", "KILL", "TYPE", "normal"))
        results = await asyncio.gather(*(r.result(timeout=180) for r in runs))
    assert killed >= 5
    assert results == [sum(range(40))] * 10
    for run in runs:
        assert_clean(await client.events(run.run_id))


@pytest.fixture
def own_redis() -> Iterator[tuple[int, Path]]:
    """A private redis-server with the AOF on, fsync on every write; stopped after."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed here")
    port = free_port()
    workdir = Path(tempfile.mkdtemp(prefix="lf-aof-"))
    yield port, workdir
    subprocess.run(["redis-cli", "-p", str(port), "shutdown", "nosave"], capture_output=True)
    shutil.rmtree(workdir, ignore_errors=True)


def start_redis(port: int, workdir: Path) -> subprocess.Popen[bytes]:
    binary = shutil.which("redis-server") or "redis-server"
    proc = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(workdir),
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--save",
            "",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_port(port)
    return proc


async def test_a_run_survives_a_redis_crash_with_the_aof_on(
    servers: Servers, namespace: str, own_redis: tuple[int, Path]
) -> None:
    port, workdir = own_redis
    redis_url = f"redis://127.0.0.1:{port}/0"
    names = Names(namespace)
    proc = start_redis(port, workdir)
    local = Servers(amqp_url=servers.amqp_url, redis_url=redis_url)
    saved = os.environ["LEDGERFLOW_REDIS_URL"]
    os.environ["LEDGERFLOW_REDIS_URL"] = redis_url  # for the steps' own counters
    try:
        settings = Settings(servers.amqp_url, redis_url, namespace)
        async with connect(settings) as backends:
            client = lf.Client(backends.store, backends.broker)
            commands = [["scheduler", APP], ["worker", APP, "--concurrency", "4"], RECONCILER]
            with processes(local, namespace, commands):
                run = await client.start(arith.long_chain, 60)
                # Crash mid-run: once the chain is under way, however slow the machine.
                deadline = time.monotonic() + 60
                while (before := len(await client.events(run.run_id))) <= 10:
                    assert time.monotonic() < deadline, "the chain never got under way"
                    await asyncio.sleep(0.05)
                proc.send_signal(signal.SIGKILL)  # a crash, not a clean shutdown
                proc.wait()
                await asyncio.sleep(1.5)
                proc = start_redis(port, workdir)
                assert await run.result(timeout=120) == sum(range(60))
            events = await client.events(run.run_id)
            assert before > 10
            assert_clean(events)
            assert Counter(e.type for e in events)[EventType.STEP_COMPLETED] == 60
    finally:
        os.environ["LEDGERFLOW_REDIS_URL"] = saved
        if proc.poll() is None:
            proc.terminate()
            proc.wait()
        await delete_namespace_queues(servers.amqp_url, names, [])


async def test_a_step_that_kills_its_worker_every_time_fails_clearly(
    servers: Servers, backends: Any, scheduling: lf.Client, namespace: str
) -> None:
    """Each redelivery is an attempt, so a crash loop ends in a recorded failure."""
    label = f"{namespace}:test:crash"
    run = await scheduling.start(flaky.one, "kills_worker", label)
    for _ in range(3):
        with processes(servers, namespace, [["worker", "tests.apps.flaky"]]) as (proc,):
            assert await asyncio.to_thread(proc.wait, 30) == 70
    with (
        processes(servers, namespace, [["worker", "tests.apps.flaky"]]),
        pytest.raises(lf.WorkflowFailedError, match="WorkerLostError"),
    ):
        await run.result(timeout=30)
    events = await scheduling.events(run.run_id)
    (failed,) = [e for e in events if e.type is EventType.STEP_FAILED]
    assert failed.data["attempt"] == 4
    assert "delivered 4 times" in failed.data["error"]["message"]


async def test_a_message_of_an_unknown_schema_version_is_dead_lettered(
    running: lf.Client, backends: Any
) -> None:
    import msgpack

    body = msgpack.packb({"v": 99, "k": "step", "run_id": "r", "step_id": "s1"})
    await backends.broker.publish(backends.names.step_queue(), body)
    dead = await backends.broker.get(backends.names.dead_queue, timeout=10)
    assert dead is not None
    assert "version 99" in dead.headers[REASON_HEADER]
    await dead.ack()
    run = await running.start(arith.total, 2)
    assert await run.result(timeout=30) == arith.expected_total(2)


async def test_runs_ride_out_redis_refusing_writes_when_full(
    running: lf.Client, backends: Any, redis_client: aioredis.Redis
) -> None:
    """maxmemory reached (OOM errors on every write): waited out, never a failed run."""
    runs = [await running.start(arith.long_chain, 30) for _ in range(3)]
    await asyncio.sleep(0.3)
    before = await redis_client.config_get("maxmemory")
    await redis_client.config_set("maxmemory", 1)
    try:
        with pytest.raises(OutOfMemoryError):
            await redis_client.set(f"{backends.names.namespace}:probe", b"1")
        await asyncio.sleep(3.0)
    finally:
        await redis_client.config_set("maxmemory", before["maxmemory"])
    results = await asyncio.gather(*(r.result(timeout=120) for r in runs))
    assert results == [sum(range(30))] * 3
    for run in runs:
        assert_clean(await running.events(run.run_id))
    assert await backends.broker.queue_depth(backends.names.dead_queue) == 0
