"""The janitor scenario: how fast retention removes finished runs, a page at once against
one run at a time, in the same run.

The retention scenario's memory stays flat only if the janitor removes runs at
least as fast as they finish. This measures the janitor alone, so the figure
does not depend on RabbitMQ or the workers (the machine is shared and both are
slowed by other tenants): it writes ``janitor_runs`` finished one-step-shaped
runs straight into the log, waits out their 1 s retention, and times one sweep
of the reconciler's janitor with its lease check, first one run at a time (the
path ``--retention-archive`` takes, and the default before removals were
paged), then again with fresh runs a page at a time (the default). The runs sit
on a ``redis-server`` of the benchmark's own (``bench.retention.own_redis``).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from ledgerflow.eventlog.events import EventType, NewEvent
from ledgerflow.eventlog.names import Names
from ledgerflow.eventlog.redis_store import RedisEventStore
from ledgerflow.scheduler.janitor import Janitor

from bench.results import JanitorResult
from bench.retention import own_redis
from bench.scenarios import Context
from ledgerflow.ops.lease import Lease
from ledgerflow.testing.namespace import delete_redis_keys

RETENTION_MS = 1000
"""The shortest retention a run may declare."""
WRITERS = 50
EVENTS_PER_RUN = 4


async def write_finished(store: RedisEventStore, prefix: str, count: int) -> list[str]:
    """``count`` finished runs of ``EVENTS_PER_RUN`` events with a 1 s retention."""
    gate = asyncio.Semaphore(WRITERS)

    async def one(i: int) -> str:
        run_id = f"{prefix}{i:07d}"
        data: dict[str, Any] = {"workflow": "bench_short", "args": [i], "kwargs": {}}
        data["retention_ms"] = RETENTION_MS
        created = NewEvent.of(
            EventType.RUN_CREATED, data=data, workflow="bench_short", retention_ms=RETENTION_MS
        )
        step = {"name": "bench_inc", "args": [i], "kwargs": {}}
        async with gate:
            await store.append(run_id, [created, NewEvent.of(EventType.RUN_STARTED)])
            await store.append(run_id, [NewEvent.of(EventType.STEP_CREATED, corr="s1", data=step)])
            await store.append(run_id, [NewEvent.of(EventType.RUN_COMPLETED, data={"result": i})])
        return run_id

    return list(await asyncio.gather(*(one(i) for i in range(count))))


async def timed_sweep(
    store: RedisEventStore, lease: Lease, *, paged: bool
) -> tuple[int, float, float]:
    """(runs removed, wall seconds, CPU seconds of this process) of one sweep."""
    janitor = Janitor(store, observers=[], dispose=None if paged else store.remove_run)

    async def fence() -> None:
        if not await lease.check():
            raise RuntimeError("janitor scenario: lost its own lease")

    began, cpu = time.perf_counter(), time.process_time()
    report = await janitor.sweep(fence=fence)
    return report.removed, time.perf_counter() - began, time.process_time() - cpu


async def scenario_janitor(ctx: Context) -> JanitorResult:
    """The reconciler's janitor removing finished runs, one at a time against a page at once."""
    n = ctx.sizes.janitor_runs
    directory = ctx.log_dir / "janitor"
    directory.mkdir(exist_ok=True)
    async with own_redis(directory) as own:
        url = own[0] if own else ctx.settings.redis_url
        names = Names(f"{ctx.names.namespace}-jan")
        store = RedisEventStore.from_url(url, names)
        try:
            lease = Lease(store.client, names, owner="bench-janitor", ttl_ms=10_000)
            figures = {}
            began = time.perf_counter()
            for paged in (False, True):
                await write_finished(store, "p" if paged else "s", n)
                await asyncio.sleep(RETENTION_MS / 1000 + 0.2)
                if not await lease.acquire():  # as the reconciler holds it while it sweeps
                    raise RuntimeError("janitor scenario: could not take its own lease")
                figures[paged] = await timed_sweep(store, lease, paged=paged)
            wall = time.perf_counter() - began
            left = sum([int(await store.client.zcard(key)) for key in names.runs_shards()])
        finally:
            await delete_redis_keys(store.client, names)
            await store.close()
    one_removed, one_s, one_cpu = figures[False]
    paged_removed, paged_s, paged_cpu = figures[True]
    return JanitorResult(
        runs=n,
        events_per_run=EVENTS_PER_RUN,
        redis=f"own redis-server at {url}" if own else f"the shared Redis at {url}",
        wall_s=wall,
        steps_per_s=None,
        one_at_a_time_runs_per_s=one_removed / one_s,
        one_at_a_time_cpu_ms_per_run=one_cpu * 1000 / max(one_removed, 1),
        paged_runs_per_s=paged_removed / paged_s,
        paged_cpu_ms_per_run=paged_cpu * 1000 / max(paged_removed, 1),
        ratio_to_floor=None,
        ratio_name="runs removed per second, a page at once / one at a time",
        speedup=(paged_removed / paged_s) / (one_removed / one_s),
        correct=one_removed == n and paged_removed == n and left == 0,
    )
