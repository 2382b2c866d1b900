"""Workers that die, hang or are stopped mid-step: nothing lost, nothing recorded twice."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from ledgerflow.eventlog.events import Event, EventType

import ledgerflow as lf
from tests.apps import flaky
from tests.processes import processes
from tests.servers import Servers

pytestmark = pytest.mark.integration

APP = "tests.apps.flaky"


async def wait_for_events(
    client: lf.Client, run_id: str, predicate: Callable[[list[Event]], bool], timeout: float = 20
) -> list[Event]:
    deadline = time.monotonic() + timeout
    while True:
        events = await client.events(run_id)
        if predicate(events):
            return events
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met; log: {[e.type.value for e in events]}")
        await asyncio.sleep(0.05)


def count(events: list[Event], kind: EventType) -> Counter[str]:
    return Counter(e.corr for e in events if e.type is kind)


def workers_of(events: list[Event]) -> list[str]:
    return [e.data["worker"] for e in events if e.type is EventType.STEP_STARTED]


async def wait_exit(proc: subprocess.Popen[bytes], timeout: float) -> int:
    return await asyncio.to_thread(proc.wait, timeout)


async def test_worker_killed_mid_step_the_step_runs_again_elsewhere(
    servers: Servers, backends: Any, scheduling: lf.Client, namespace: str
) -> None:
    ns = backends.names.namespace
    label = f"{namespace}:test:kill"
    with processes(servers, ns, [["worker", APP, "--concurrency", "2"]]) as (victim,):
        run = await scheduling.start(flaky.one, "slow", label, 2.0)
        await wait_for_events(
            scheduling, run.run_id, lambda ev: bool(count(ev, EventType.STEP_STARTED))
        )
        victim.send_signal(signal.SIGKILL)
        await wait_exit(victim, 10)
        with processes(servers, ns, [["worker", APP, "--concurrency", "2"]]):
            assert await run.result(timeout=60) == "slept 2.0"
    events = await scheduling.events(run.run_id)
    assert count(events, EventType.STEP_COMPLETED) == {"s1": 1}
    starts = [e for e in events if e.type is EventType.STEP_STARTED]
    assert [e.data["attempt"] for e in starts] == [1, 2]  # the redelivery is the next attempt
    assert len(set(workers_of(events))) == 2


async def test_hung_worker_is_detected_by_its_missing_heartbeat(
    servers: Servers, backends: Any, scheduling: lf.Client, namespace: str
) -> None:
    """SIGSTOP freezes a worker mid-step; the timer loop sees the heartbeat go stale.

    The frozen worker runs with concurrency 1 so its prefetch window is full: a
    frozen worker with spare window would also swallow the retry until RabbitMQ's
    AMQP heartbeat (15 s by default here) drops its connection.
    """
    ns = backends.names.namespace
    label = f"{namespace}:test:hung"
    with processes(servers, ns, [["worker", APP, "--concurrency", "1"]]) as (frozen,):
        run = await scheduling.start(flaky.one, "slow_heartbeat", label, 3.0)
        await wait_for_events(
            scheduling, run.run_id, lambda ev: bool(count(ev, EventType.STEP_STARTED))
        )
        frozen.send_signal(signal.SIGSTOP)
        try:
            with processes(servers, ns, [["worker", APP, "--concurrency", "2"]]):
                assert await run.result(timeout=60) == "done"
        finally:
            frozen.send_signal(signal.SIGCONT)
        # The thawed worker's late outcome for attempt 1 must not be recorded twice.
        await asyncio.sleep(1.5)
    events = await scheduling.events(run.run_id)
    (retry,) = [e for e in events if e.type is EventType.STEP_RETRYING]
    assert retry.data["error"]["type"] == "ledgerflow.HeartbeatTimeoutError"
    assert "presumed lost" in retry.data["error"]["message"]
    assert count(events, EventType.STEP_COMPLETED) == {"s1": 1}
    assert sum(e.type is EventType.RUN_COMPLETED for e in events) == 1


async def test_sigterm_lets_running_steps_finish_and_exits_zero(
    servers: Servers, backends: Any, scheduling: lf.Client, namespace: str
) -> None:
    ns = backends.names.namespace
    label = f"{namespace}:test:term"
    worker = ["worker", APP, "--concurrency", "4", "--grace", "20"]
    with processes(servers, ns, [worker]) as (proc,):
        run = await scheduling.start(flaky.many_slow, label, 4, 1.0)
        await wait_for_events(
            scheduling, run.run_id, lambda ev: len(count(ev, EventType.STEP_STARTED)) == 4
        )
        proc.send_signal(signal.SIGTERM)
        assert await wait_exit(proc, 30) == 0
        events = await scheduling.events(run.run_id)
        # All four in-flight steps finished inside the grace period, on the stopping worker.
        assert len(count(events, EventType.STEP_COMPLETED)) == 4
        assert await run.result(timeout=30) == ["slept 1.0"] * 4
    events = await scheduling.events(run.run_id)
    assert max(count(events, EventType.STEP_STARTED).values()) == 1


async def test_sigterm_past_the_grace_period_hands_steps_back(
    servers: Servers, backends: Any, scheduling: lf.Client, namespace: str
) -> None:
    ns = backends.names.namespace
    label = f"{namespace}:test:grace"
    worker = ["worker", APP, "--concurrency", "4", "--grace", "0.3"]
    with processes(servers, ns, [worker]) as (proc,):
        run = await scheduling.start(flaky.many_slow, label, 3, 3.0)
        await wait_for_events(
            scheduling, run.run_id, lambda ev: len(count(ev, EventType.STEP_STARTED)) == 3
        )
        proc.send_signal(signal.SIGTERM)
        assert await wait_exit(proc, 30) == 0
        events = await scheduling.events(run.run_id)
        assert count(events, EventType.STEP_COMPLETED) == Counter()
        with processes(servers, ns, [["worker", APP, "--concurrency", "4"]]):
            assert await run.result(timeout=60) == ["slept 3.0"] * 3
    events = await scheduling.events(run.run_id)
    assert set(count(events, EventType.STEP_COMPLETED).values()) == {1}
    assert set(count(events, EventType.STEP_STARTED).values()) == {2}


async def test_second_signal_exits_at_once_and_nothing_is_recorded_twice(
    servers: Servers, backends: Any, scheduling: lf.Client, namespace: str
) -> None:
    ns = backends.names.namespace
    label = f"{namespace}:test:twice"
    worker = ["worker", APP, "--concurrency", "4", "--grace", "60"]
    with processes(servers, ns, [worker]) as (proc,):
        run = await scheduling.start(flaky.many_slow, label, 2, 5.0)
        await wait_for_events(
            scheduling, run.run_id, lambda ev: len(count(ev, EventType.STEP_STARTED)) == 2
        )
        proc.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        started = time.monotonic()
        assert await wait_exit(proc, 10) != 0
        assert time.monotonic() - started < 3
        with processes(servers, ns, [["worker", APP, "--concurrency", "4"]]):
            assert await run.result(timeout=60) == ["slept 5.0"] * 2
    events = await scheduling.events(run.run_id)
    assert set(count(events, EventType.STEP_COMPLETED).values()) == {1}
