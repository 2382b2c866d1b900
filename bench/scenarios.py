"""The scenarios: each starts runs on the running processes and returns a typed result.

Every figure is read from the runs' own logs (``bench.stats``), next to the
floor it is compared with (``bench.floors``). A run that does not finish in time
is diagnosed from its log, which is kept next to the process logs, since the
namespace is deleted at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ledgerflow.eventlog import codec
from ledgerflow.eventlog.blobs import BlobRef, resolve
from ledgerflow.eventlog.events import Event, EventType
from ledgerflow.eventlog.names import Names
from ledgerflow.eventlog.redis_client import RedisClient, redis_client
from ledgerflow.eventlog.settings import Settings
from ledgerflow.eventlog.store import EventStore

import ledgerflow as lf
from bench import apps
from bench.config import RUN_TIMEOUT, SLEEP_TARGET_MS, Layout, Sizes
from bench.floors import Floor
from bench.resources import proc_cpu_seconds, rss_kib
from bench.results import (
    ChainResult,
    FanoutResult,
    LongResult,
    ManyResult,
    ScenarioResult,
    SleepResult,
    SoakResult,
    StorageResult,
)
from bench.stats import (
    StepTimes,
    cpu_per_step_ms,
    fmt,
    integrity,
    mean,
    merge,
    pct,
    ratio,
    run_span_ms,
)


@dataclass
class Context:
    client: lf.Client
    store: EventStore  # the client's store, with every protocol (the janitor's too)
    sizes: Sizes
    floor: Floor
    names: Names
    log_dir: Path
    redis_url: str
    settings: Settings  # the benchmark's servers and namespace
    loop: str  # the event loop of its processes
    layout: Layout  # how many of which processes
    scheduler_pids: list[int]
    process_pids: dict[str, int]


class StuckRunError(RuntimeError):
    """A run did not finish in time; the message says where its log stopped."""


async def queue_depths(client: lf.Client, names: Names) -> dict[str, int | None]:
    """Messages waiting in the namespace's queues (the dead queue must stay empty)."""
    depths: dict[str, int | None] = {}
    for queue in (names.step_queue(), names.runs_queue, names.dead_queue):
        try:
            depths[queue] = await client.broker.queue_depth(queue)
        except Exception:
            depths[queue] = None
    return depths


async def await_results(ctx: Context, runs: Sequence[lf.RunHandle], timeout: float) -> list[Any]:
    """Every run's result; a run that does not finish is diagnosed from its log, then raised.

    The namespace is deleted at the end, so the evidence is kept here: the stuck
    run's events go to a JSON-lines file next to the process logs.
    """
    try:
        return list(await asyncio.gather(*(r.result(timeout=timeout) for r in runs)))
    except lf.ResultTimeoutError:
        pass
    stuck = []
    for run in runs:
        state = await run.state()
        if not state.finished:
            stuck.append((run.run_id, state, await run.events()))
    if not stuck:
        raise StuckRunError(f"a result wait timed out after {timeout:g} s, yet every run finished")
    run_id, state, events = stuck[0]
    dump = ctx.log_dir / f"stuck-{run_id}.jsonl"
    dump.write_text(
        "".join(
            json.dumps({"id": e.id, "type": e.type.value, "corr": e.corr, "ts": e.ts}) + "\n"
            for e in events
        )
    )
    open_steps = sorted(c for c, st in state.steps.items() if st.status != "completed")
    tail = ", ".join(f"{e.type.value} {e.corr}".strip() for e in events[-4:])
    raise StuckRunError(
        f"{len(stuck)} of {len(runs)} runs unfinished after {timeout:g} s; run {run_id}: status "
        f"{state.status}, {len(events)} events, open steps {open_steps[:5]}, last events [{tail}]; "
        f"queue depths {await queue_depths(ctx.client, ctx.names)}; log in {dump}"
    )


ScenarioFn = Callable[[Context], Awaitable[ScenarioResult]]


async def read_all(client: lf.Client, run_ids: Sequence[str]) -> list[list[Event]]:
    """Read many logs with bounded concurrency (the store's pool has 64 connections)."""
    gate = asyncio.Semaphore(32)

    async def one(run_id: str) -> list[Event]:
        async with gate:
            return await client.events(run_id)

    return list(await asyncio.gather(*(one(r) for r in run_ids)))


async def scenario_fanout(ctx: Context) -> FanoutResult:
    """One run fanning out N steps: throughput, against the pipelined AMQP floor."""
    n = ctx.sizes.fanout
    began = time.perf_counter()
    run = await ctx.client.start(apps.fanout, n)
    (result,) = await await_results(ctx, [run], RUN_TIMEOUT)
    wall = time.perf_counter() - began
    events = await run.events()
    times = StepTimes.of(events)
    lat = times.latencies()
    steps_per_s = n / wall
    return FanoutResult(
        steps=n,
        wall_s=wall,
        steps_per_s=steps_per_s,
        step_p50_ms=pct(lat, 50),
        step_p99_ms=pct(lat, 99),
        run_span_ms=run_span_ms(events),
        ratio_to_floor=ratio(steps_per_s, ctx.floor.amqp_pipelined_msgs_per_s),
        ratio_name="steps/s / floor pipelined msgs/s",
        correct=result == sum(range(n)),
        integrity=integrity(times, n),
    )


async def scenario_many(ctx: Context) -> ManyResult:
    """Hundreds of small runs at once: the scheduler's per-run cost, not one big batch."""
    runs_n, width = ctx.sizes.many_runs, apps.MANY_WIDTH
    began = time.perf_counter()
    runs = await asyncio.gather(*(ctx.client.start(apps.many, width) for _ in range(runs_n)))
    results = await await_results(ctx, runs, RUN_TIMEOUT)
    wall = time.perf_counter() - began
    logs = await read_all(ctx.client, [r.run_id for r in runs])
    merged = StepTimes()
    for run, events in zip(runs, logs, strict=True):
        merge(merged, StepTimes.of(events), run.run_id)
    lat = merged.latencies()
    spans = [s for s in (run_span_ms(e) for e in logs) if s is not None]
    steps = runs_n * width
    steps_per_s = steps / wall
    return ManyResult(
        steps=steps,
        runs=runs_n,
        wall_s=wall,
        steps_per_s=steps_per_s,
        runs_per_s=runs_n / wall,
        step_p50_ms=pct(lat, 50),
        step_p99_ms=pct(lat, 99),
        run_p50_ms=pct(spans, 50),
        run_p99_ms=pct(spans, 99),
        ratio_to_floor=ratio(steps_per_s, ctx.floor.amqp_pipelined_msgs_per_s),
        ratio_name="steps/s / floor pipelined msgs/s",
        correct=results == [sum(range(width))] * runs_n,
        integrity=integrity(merged, steps),
    )


async def scenario_chain(ctx: Context) -> ChainResult:
    """N sequential steps: the per-step hop latency, against the AMQP round-trip floor."""
    n = ctx.sizes.chain
    began = time.perf_counter()
    run = await ctx.client.start(apps.chain, n)
    (result,) = await await_results(ctx, [run], RUN_TIMEOUT)
    wall = time.perf_counter() - began
    events = await run.events()
    times = StepTimes.of(events)
    lat, gaps, cycles = times.latencies(), times.gaps(), times.cycles()
    gap_p50 = pct(gaps, 50)
    return ChainResult(
        steps=n,
        wall_s=wall,
        steps_per_s=n / wall,
        step_p50_ms=pct(lat, 50),
        step_p99_ms=pct(lat, 99),
        step_to_step_p50_ms=gap_p50,
        step_to_step_p99_ms=pct(gaps, 99),
        cycle_p50_ms=pct(cycles, 50),
        cycle_mean_ms=mean(cycles),
        hop_mean_ms={k: mean(v) for k, v in times.hops().items()},
        ratio_to_floor=ratio(gap_p50, ctx.floor.amqp_rtt_p50_ms),
        ratio_name="step-to-step p50 / floor AMQP round-trip p50",
        step_ratio_to_floor=ratio(pct(lat, 50), ctx.floor.amqp_rtt_p50_ms),
        correct=result == n,
        integrity=integrity(times, n),
    )


async def sample_progress(
    ctx: Context, run_id: str, samples: list[tuple[int, float]], every: float = 0.2
) -> None:
    """(events in the run's log, scheduler CPU seconds) every ``every`` s, until cancelled.

    Latency has ms resolution and a noisy neighbourhood; CPU per step, early vs
    late in one run, is the sharper test of per-activation cost growing with the log.
    """
    client = redis_client(ctx.redis_url)
    stream = ctx.names.stream(run_id)
    try:
        while True:
            length = int(await client.xlen(stream))
            cpu = sum(proc_cpu_seconds(pid) or 0.0 for pid in ctx.scheduler_pids)
            samples.append((length, cpu))
            await asyncio.sleep(every)
    finally:
        await client.aclose()


async def scenario_long(ctx: Context) -> LongResult:
    """A long sequential run: the last steps must cost what the first did (no O(n^2))."""
    n, window = ctx.sizes.long, ctx.sizes.long_window
    run_id = secrets.token_hex(16)
    samples: list[tuple[int, float]] = []
    sampler = asyncio.create_task(sample_progress(ctx, run_id, samples))
    began = time.perf_counter()
    try:
        run = await ctx.client.start(apps.chain, n, run_id=run_id)
        (result,) = await await_results(ctx, [run], 2 * RUN_TIMEOUT)
    finally:
        sampler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampler
    wall = time.perf_counter() - began
    cpu_early, cpu_late = cpu_per_step_ms(samples, 0.0, 0.2), cpu_per_step_ms(samples, 0.8, 1.0)
    events = await run.events()
    times = StepTimes.of(events)
    first, last = times.corrs[1 : window + 1], times.corrs[-window:]
    lat_first, lat_last = times.latencies(first), times.latencies(last)
    cyc_first, cyc_last = times.cycles(first), times.cycles(last)
    gap_first, gap_last = times.gaps(first), times.gaps(last)
    return LongResult(
        steps=n,
        wall_s=wall,
        steps_per_s=n / wall,
        step_p50_ms=pct(times.latencies(), 50),
        step_p99_ms=pct(times.latencies(), 99),
        first_step_p50_ms=pct(lat_first, 50),
        last_step_p50_ms=pct(lat_last, 50),
        first_gap_p50_ms=pct(gap_first, 50),
        last_gap_p50_ms=pct(gap_last, 50),
        first_cycle_mean_ms=mean(cyc_first),
        last_cycle_mean_ms=mean(cyc_last),
        scheduler_cpu_ms_per_step_first_fifth=cpu_early,
        scheduler_cpu_ms_per_step_last_fifth=cpu_late,
        scheduler_cpu_ratio=ratio(cpu_late, cpu_early),
        ratio_to_floor=ratio(pct(lat_last, 50), pct(lat_first, 50)),
        ratio_name=f"step p50, last {window} / first {window}",
        gap_ratio=ratio(pct(gap_last, 50), pct(gap_first, 50)),
        cycle_mean_ratio=ratio(mean(cyc_last), mean(cyc_first)),
        summary_extra=(
            f"; cycle mean x{fmt(ratio(mean(cyc_last), mean(cyc_first)), 2)}; scheduler "
            f"CPU/step last/first fifth x{fmt(ratio(cpu_late, cpu_early), 2)}"
        ),
        correct=result == n,
        integrity=integrity(times, n),
    )


async def sample_rss(
    ctx: Context, run_id: str, samples: list[tuple[int, dict[str, int | None]]]
) -> None:
    """(events in the run's log, RSS of every process) every 0.5 s, until cancelled."""
    client = redis_client(ctx.redis_url)
    stream = ctx.names.stream(run_id)
    try:
        while True:
            length = int(await client.xlen(stream))
            samples.append((length, {k: rss_kib(p) for k, p in ctx.process_pids.items()}))
            await asyncio.sleep(0.5)
    finally:
        await client.aclose()


async def scenario_soak(ctx: Context) -> SoakResult:
    """One run of 200,000 steps in waves of parallel steps: memory must stay flat."""
    waves, width = ctx.sizes.soak_waves, ctx.sizes.soak_width
    n = waves * width
    run_id = secrets.token_hex(16)
    samples: list[tuple[int, dict[str, int | None]]] = []
    sampler = asyncio.create_task(sample_rss(ctx, run_id, samples))
    began = time.perf_counter()
    try:
        run = await ctx.client.start(apps.waves, waves, width, run_id=run_id)
        (result,) = await await_results(ctx, [run], 20 * RUN_TIMEOUT)
    finally:
        sampler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampler
    wall = time.perf_counter() - began
    total = 3 * n + 3  # created/started/completed per step, plus the run's own events
    # The baseline is taken once the run is a tenth through: start-up and the first
    # waves' allocations (caches, pools, buffers) are then in place.
    early = next((s for length, s in samples if length >= total // 10), None)
    late = samples[-1][1] if samples else None
    growth: dict[str, float | None] = {}
    for label in ctx.process_pids:
        first = early.get(label) if early else None
        last = late.get(label) if late else None
        growth[label] = None if not first or not last else 100.0 * (last - first) / first
    worst = max((g for g in growth.values() if g is not None), default=None)
    curve = []  # RSS (MiB, worst process) at each tenth of the run: the shape, not two points
    for tenth in range(1, 11):
        at = next((s for length, s in samples if length >= total * tenth // 10), None)
        if at is None and tenth == 10 and samples:
            at = samples[-1][1]
        values = [v for v in (at or {}).values() if v]
        curve.append(round(max(values) / 1024, 1) if values else None)
    # Not HGETALL: the status hash of a 200,000-step run has a field per step.
    logged = await ctx.store.event_count(run_id)
    return SoakResult(
        steps=n,
        waves=waves,
        width=width,
        wall_s=wall,
        steps_per_s=n / wall,
        step_p50_ms=None,
        step_p99_ms=None,
        rss_kib_at_tenth=early,
        rss_kib_at_end=late,
        rss_growth_percent=growth,
        rss_worst_growth_percent=worst,
        rss_mib_by_tenth=curve,
        passed=worst is not None and worst < 10.0,
        events=int(logged),
        ratio_to_floor=worst,
        ratio_name="worst RSS growth %, a tenth of the way -> end",
        correct=result == n * (width - 1) // 2,
        integrity={},
    )


async def scenario_sleep(ctx: Context) -> SleepResult:
    """Concurrent durable sleeps with staggered due times: how late the timers fire."""
    n, seconds = ctx.sizes.sleepers, ctx.sizes.sleep_seconds
    stagger = seconds / n  # due times spread over one sleep length
    began = time.perf_counter()
    runs = []
    for _ in range(n):
        runs.append(await ctx.client.start(apps.sleeper, seconds))
        await asyncio.sleep(stagger)
    results = await await_results(ctx, runs, RUN_TIMEOUT)
    wall = time.perf_counter() - began
    logs = await read_all(ctx.client, [r.run_id for r in runs])
    lateness: list[float] = []
    slept: list[float] = []
    wake_to_end: list[float] = []
    for events in logs:
        created = {e.corr: e for e in events if e.type is EventType.WAIT_CREATED}
        for event in events:
            if event.type is EventType.WAIT_COMPLETED and event.corr in created:
                due = created[event.corr].data["due"]
                lateness.append(float(event.ts - int(due)))
                slept.append(float(event.ts - created[event.corr].ts))
                end = run_span_ms(events)
                if end is not None:
                    wake_to_end.append(float(events[0].ts + end - event.ts))
    worst = max(lateness) if lateness else None
    return SleepResult(
        steps=0,
        runs=n,
        sleep_s=seconds,
        wall_s=wall,
        steps_per_s=None,
        late_p50_ms=pct(lateness, 50),
        late_p99_ms=pct(lateness, 99),
        late_max_ms=worst,
        late_min_ms=min(lateness) if lateness else None,
        wake_to_run_completed_p50_ms=pct(wake_to_end, 50),
        # due = the last event's ts + the delay (replay-safe lf.now()), so this can be
        # a little under the requested sleep: the workflow's clock lags wait_created.
        slept_p50_ms=pct(slept, 50),
        slept_min_ms=min(slept) if slept else None,
        slept_max_ms=max(slept) if slept else None,
        target_ms=SLEEP_TARGET_MS,
        passed=worst is not None and len(lateness) == n and worst <= SLEEP_TARGET_MS,
        ratio_to_floor=None,
        ratio_name="",
        correct=results == [seconds] * n,
    )


async def memory_usage(client: RedisClient, keys: Sequence[str]) -> int:
    """What Redis says these keys cost (MEMORY USAGE, every element sampled)."""
    total = 0
    for key in keys:
        used = await client.memory_usage(key, samples=0)
        total += int(used or 0)
    return total


async def run_keys(client: RedisClient, names: Names, run_id: str) -> tuple[list[str], list[str]]:
    """(the run's log keys: stream and status hash, its blob keys: set and blobs)."""
    digests = await client.smembers(names.blob_set(run_id))
    blobs = [names.blob(run_id, d.decode() if isinstance(d, bytes) else d) for d in digests]
    return [names.stream(run_id), names.status(run_id)], [names.blob_set(run_id), *blobs]


async def inline_copy_bytes(
    ctx: Context, client: RedisClient, run_id: str, events: Sequence[Event]
) -> int:
    """The same log written with every value inline, into a scratch stream: its bytes."""
    scratch = f"{ctx.names.namespace}:bench:inline:{run_id}"
    store = ctx.client.store.blob_store

    async def fetch(ref: BlobRef) -> Any:
        return codec.decode(await store.get_blob(run_id, ref), max_size=None)

    try:
        for event in events:
            data = await resolve(event.data, fetch)
            fields = {
                "type": event.type.value,
                "corr": event.corr,
                "data": codec.encode(data, max_size=None, envelope=codec.ENVELOPE_DEPTH),
                "ts": str(event.ts),
                "v": str(event.v),
            }
            await client.xadd(scratch, fields)  # type: ignore[arg-type]
        return await memory_usage(client, [scratch, ctx.names.status(run_id)])
    finally:
        await client.delete(scratch)


async def scenario_storage(ctx: Context) -> StorageResult:
    """Redis bytes per event and per finished 10-step run, with and without offload."""
    n, size = ctx.sizes.storage_runs, ctx.sizes.storage_payload
    steps = apps.STORAGE_STEPS
    began = time.perf_counter()
    small = [await ctx.client.start(apps.storage, 16) for _ in range(n)]
    large = [await ctx.client.start(apps.storage, size) for _ in range(n)]
    results = await await_results(ctx, [*small, *large], RUN_TIMEOUT)
    wall = time.perf_counter() - began
    client = redis_client(ctx.redis_url)
    try:
        small_events = small_bytes = 0
        for run in small:
            log_keys, _ = await run_keys(client, ctx.names, run.run_id)
            small_events += int(await client.xlen(ctx.names.stream(run.run_id)))
            small_bytes += await memory_usage(client, log_keys)
        log_bytes = blob_bytes = inline_bytes = 0
        for run in large:
            log_keys, blob_keys = await run_keys(client, ctx.names, run.run_id)
            log_bytes += await memory_usage(client, log_keys)
            blob_bytes += await memory_usage(client, blob_keys)
            inline_bytes += await inline_copy_bytes(ctx, client, run.run_id, await run.events())
    finally:
        await client.aclose()
    return StorageResult(
        runs=n,
        steps_per_run=steps,
        wall_s=wall,
        steps_per_s=None,
        small_events_per_run=small_events / n,
        small_bytes_per_event=small_bytes / max(small_events, 1),
        small_bytes_per_run=small_bytes / n,
        large_payload_bytes=size,
        large_offloaded_log_bytes_per_run=log_bytes / n,
        large_offloaded_blob_bytes_per_run=blob_bytes / n,
        large_offloaded_bytes_per_run=(log_bytes + blob_bytes) / n,
        large_inline_bytes_per_run=inline_bytes / n,
        ratio_to_floor=None,
        ratio_name="",
        correct=results == [16 * steps] * n + [size * steps] * n,
    )


SCENARIO_FNS: dict[str, ScenarioFn] = {
    "fanout": scenario_fanout,
    "many": scenario_many,
    "chain": scenario_chain,
    "long": scenario_long,
    "soak": scenario_soak,
    "sleep": scenario_sleep,
    "storage": scenario_storage,
}
