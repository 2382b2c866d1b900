"""Prometheus metrics (issue 7, item 3): real runs, scraped over HTTP from /metrics.

Counters live in one registry per process, which the tests of a session share,
so every assertion is on the difference between a scrape before and one after.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import time
import urllib.request
from collections.abc import AsyncIterator
from typing import Any

import pytest
from ledgerflow.scheduler.reconciler import Reconciler
from prometheus_client.parser import text_string_to_metric_families

import ledgerflow as lf
from ledgerflow.cli.metrics import exported
from ledgerflow.ops import faults
from ledgerflow.ops.lease import Lease
from tests.apps import arith, flaky, waiting
from tests.processes import processes
from tests.servers import Servers

pytestmark = pytest.mark.integration

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def scrape_sync(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    found: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            found[(s.name, frozenset(s.labels.items()))] = s.value
    return found


async def scrape(port: int) -> Samples:
    return await asyncio.to_thread(scrape_sync, port)


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def metrics_args(port: int, interval: float = 0.1) -> argparse.Namespace:
    return argparse.Namespace(
        metrics_port=port, metrics_addr="127.0.0.1", metrics_interval=interval
    )


@pytest.fixture
async def port(backends: Any) -> AsyncIterator[int]:
    """/metrics of this process, with gauges sampled every 0.1 s from this test's namespace."""
    chosen = free_port()
    async with exported(metrics_args(chosen), backends, ["default"]):
        yield chosen


@pytest.fixture(autouse=True)
def no_faults_left() -> Any:
    faults.disarm_all()
    yield
    faults.disarm_all()


async def until(condition: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not await condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.1)


async def test_step_counters_and_duration_for_completed_retried_and_failed_steps(
    running: lf.Client, port: int, namespace: str
) -> None:
    before = await scrape(port)
    run = await running.start(arith.total, 3)
    assert await run.result(timeout=15) == arith.expected_total(3)
    flaky_run = await running.start(flaky.one, "fails_twice", f"{namespace}:flaky")
    assert await flaky_run.result(timeout=15) == "ok on attempt 3"
    fatal_run = await running.start(flaky.one, "fatal", f"{namespace}:fatal")
    with pytest.raises(lf.WorkflowFailedError):
        await fatal_run.result(timeout=15)
    after = await scrape(port)

    completed = "ledgerflow_steps_completed_total"
    assert delta(before, after, completed, step="it_add") == 2 * 3  # total(n): 2n adds
    assert delta(before, after, completed, step="fl_fails_twice") == 1
    assert delta(before, after, "ledgerflow_steps_started_total", step="fl_fails_twice") == 3
    assert delta(before, after, "ledgerflow_steps_retried_total", step="fl_fails_twice") == 2
    assert delta(before, after, "ledgerflow_steps_failed_total", step="fl_fails_twice") == 0
    assert delta(before, after, "ledgerflow_steps_failed_total", step="fl_fatal") == 1
    assert delta(before, after, completed, step="fl_fatal") == 0

    duration = "ledgerflow_step_duration_seconds"
    assert delta(before, after, f"{duration}_count", step="it_add", outcome="completed") == 6
    assert delta(before, after, f"{duration}_count", step="fl_fails_twice", outcome="retrying") == 2
    assert delta(before, after, f"{duration}_count", step="fl_fatal", outcome="failed") == 1
    # Every it_add took less than ten seconds: all six are in the 10 s bucket.
    assert (
        delta(before, after, f"{duration}_bucket", step="it_add", le="10.0", outcome="completed")
        == 6
    )
    # Each run was activated at least once per step outcome plus its creation.
    assert delta(before, after, "ledgerflow_activation_latency_seconds_count") >= 3 + 3 + 2


async def test_gauges_show_active_runs_and_pending_timers_then_lateness_when_fired(
    running: lf.Client, port: int
) -> None:
    async def active_is(n: float) -> bool:
        samples = await scrape(port)
        return value(samples, "ledgerflow_active_runs") == n

    async def sleeping_is(n: float) -> bool:
        # A run is active from run_created; its timer only from wait_created, which the
        # scheduler appends a moment later, and the sampler may run in between.
        samples = await scrape(port)
        active = value(samples, "ledgerflow_active_runs")
        return active == n and value(samples, "ledgerflow_timers_pending") == n

    before = await scrape(port)
    sleeping = [await running.start(waiting.sleeper, 60.0) for _ in range(2)]
    await until(lambda: sleeping_is(2))
    samples = await scrape(port)
    assert value(samples, "ledgerflow_active_runs") == 2
    assert value(samples, "ledgerflow_timers_pending") == 2
    assert value(samples, "ledgerflow_gauge_last_success_timestamp_seconds", gauge="active_runs")
    for run in sleeping:
        await running.cancel(run.run_id)
    await until(lambda: active_is(0))

    short = await running.start(waiting.sleeper, 0.3)
    assert await short.result(timeout=15) >= 0.3
    after = await scrape(port)
    lateness = "ledgerflow_timer_lateness_seconds"
    assert delta(before, after, f"{lateness}_count", kind="wait") == 1
    # A 20 ms timer tick on an idle loop: fired well within a second of its due time.
    assert delta(before, after, f"{lateness}_bucket", kind="wait", le="1.0") == 1

    async def pending_is(n: float) -> bool:
        return value(await scrape(port), "ledgerflow_timers_pending") == n

    # The fired timer left the index; the cancelled runs' stay until due (then do nothing).
    await until(lambda: pending_is(2))


async def test_queue_depth_gauge_counts_ready_messages(
    backends: Any, port: int, scheduling: lf.Client
) -> None:
    """No worker consumes: the step messages of a fan-out wait in the step queue."""
    queue = await backends.broker.declare_step_queue("default")

    async def depth_is(n: float) -> bool:
        return value(await scrape(port), "ledgerflow_queue_depth", queue=queue) == n

    await scheduling.start(arith.total, 4)
    await until(lambda: depth_is(1))  # one message: a batch of the run's four steps
    await scheduling.start(arith.total, 2)
    await until(lambda: depth_is(2))


async def test_failed_gauge_reads_are_counted_and_do_not_break_the_scrape(
    backends: Any, port: int
) -> None:
    """A queue that was never declared: reading its depth fails (a passive declare)."""
    from ledgerflow.ops.metrics import GaugeSampler

    missing = backends.names.step_queue("never-declared")

    async def depth(queue: str) -> int:
        return (await backends.broker.queue_info(queue)).depth

    sampler = GaugeSampler(backends.store, depth=depth, queues=[missing], read_timeout=2.0)
    before = await scrape(port)
    await sampler.sample_once()
    after = await scrape(port)
    assert (
        delta(before, after, "ledgerflow_gauge_read_errors_total", gauge=f"queue_depth:{missing}")
        == 1
    )
    assert value(after, "ledgerflow_active_runs") == 0  # the other reads went ahead


async def test_reconciler_recoveries_counted_by_reason(
    backends: Any, running: lf.Client, port: int
) -> None:
    reconciler = Reconciler(
        backends.store,
        backends.broker,
        Lease(backends.store.client, backends.names, owner="metrics-test", ttl_ms=2000),
        stale_after=0.5,
        interval=0.2,
        default_step_limit=0.5,
    )
    task = asyncio.create_task(reconciler.run())
    try:
        before = await scrape(port)
        faults.arm(faults.WORKER_AFTER_STEP_COMPLETED)  # the activation after a step is lost
        run = await running.start(arith.long_chain, 3)
        assert await run.result(timeout=15) == sum(range(3))
        after = await scrape(port)
    finally:
        reconciler.stop()
        await asyncio.wait_for(task, 10)
    reason = "outcome not acted on"
    assert delta(before, after, "ledgerflow_reconciler_recoveries_total", reason=reason) >= 1
    assert (
        delta(before, after, "ledgerflow_reconciler_recoveries_total", reason=reason)
        == (reconciler.recoveries[reason])
    )
    assert delta(before, after, "ledgerflow_reconciler_sweeps_total") >= 1


async def test_cli_processes_serve_metrics_on_metrics_port(
    servers: Servers, backends: Any, scheduling: lf.Client
) -> None:
    """`ledgerflow worker --metrics-port` and `reconciler --metrics-port` serve /metrics."""
    ns = backends.names.namespace
    worker_port, reconciler_port = free_port(), free_port()
    fast = ["--metrics-interval", "0.2", "--metrics-addr", "127.0.0.1"]
    commands = [
        ["worker", "tests.apps.arith", "--metrics-port", str(worker_port), *fast],
        ["reconciler", "--interval", "0.2", "--metrics-port", str(reconciler_port), *fast],
    ]
    with processes(servers, ns, commands):

        async def served() -> bool:
            try:
                await scrape(worker_port)
                await scrape(reconciler_port)
            except OSError:
                return False
            return True

        await until(served, timeout=30)
        before = await scrape(worker_port)
        runs = [await scheduling.start(arith.total, 5) for _ in range(4)]
        for run in runs:
            await run.result(timeout=30)
        after = await scrape(worker_port)
        reconciler = await scrape(reconciler_port)
    # Only the subprocess runs steps (this process has a scheduler, no worker).
    assert delta(before, after, "ledgerflow_steps_completed_total", step="it_add") == 4 * 10
    assert ("ledgerflow_queue_depth", frozenset({("queue", f"{ns}.steps.default")})) in after
    assert value(after, "process_resident_memory_bytes") > 0
    assert value(reconciler, "ledgerflow_reconciler_sweeps_total") >= 1


async def test_schedule_ticks_and_their_lag_are_counted(
    backends: Any, running: lf.Client, port: int, namespace: str
) -> None:
    from ledgerflow.scheduler.schedules import add_schedule, build_spec, find_schedule

    from tests.apps import scheduled

    name = f"m-{namespace}"
    before = await scrape(port)
    spec = build_spec(name, scheduled.tick, every=1, args=["m"], overlap="allow")
    await add_schedule(backends.store, spec)

    async def two_runs() -> bool:
        return (await find_schedule(backends.store, name)).runs >= 2

    await until(two_runs, timeout=30)
    after = await scrape(port)
    runs = (await find_schedule(backends.store, name)).runs
    ticks = "ledgerflow_schedule_ticks_total"
    # A tick may be acted on between the scrape and the read above: at most one more.
    assert runs - 1 <= delta(before, after, ticks, schedule=name, outcome="started") <= runs
    counted = delta(before, after, "ledgerflow_schedule_lag_seconds_count", schedule=name)
    assert counted == delta(before, after, ticks, schedule=name, outcome="started")


async def test_an_overdue_schedule_shows_in_the_sampled_gauge(backends: Any, port: int) -> None:
    """No scheduler runs here: the schedule waits, and the gauge says how long."""
    from ledgerflow.scheduler.schedules import build_spec

    spec = build_spec("overdue", "sched_tick", every=60, args=["x"])
    await backends.store.put_schedule(spec, next_ms=await backends.store.now_ms() - 30_000)

    async def overdue() -> bool:
        return value(await scrape(port), "ledgerflow_schedule_overdue_seconds") >= 30

    await until(overdue)
    await backends.store.pause_schedule("overdue", paused=True, next_ms=0)

    async def cleared() -> bool:
        return value(await scrape(port), "ledgerflow_schedule_overdue_seconds") == 0

    await until(cleared)
