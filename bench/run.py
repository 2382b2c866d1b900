"""The ledgerflow benchmark: real worker and scheduler processes on real RabbitMQ and Redis.

``python -m bench.run [--quick] [--only NAME ...]`` (``make bench``).

Why it is built this way:

* The machine is shared and noisy, so an absolute figure means little on its own.
  Every run first measures a *floor* - what bare aio-pika (confirmed publish on a
  quorum queue, consume, ack) and bare redis-py (XADD) achieve here, now - and
  reports each ledgerflow figure next to it as a ratio. It also samples the CPU
  time of every process involved (and of the whole machine), so a reader can tell
  which component bounded a number, and how much of the machine others were using.
* Latencies come from the run's own log (``Event.ts``, ms from the Redis clock), so
  they are what the product recorded, not what the benchmark's client saw.
* It uses its own namespace ``bench-<random>`` and deletes every Redis key, queue
  and exchange of it at the end, even when a scenario fails or it is interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import itertools
import json
import math
import os
import platform
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import aio_pika
import redis.asyncio as aioredis
from aio_pika.abc import AbstractIncomingMessage
from ledgerflow.eventlog.events import Event, EventType
from ledgerflow.eventlog.names import Names
from ledgerflow.eventlog.settings import Settings
from ledgerflow.worker.backend import connect

import ledgerflow as lf
from bench import apps
from ledgerflow.cli.supervisor import run_with_loop

ROOT = Path(__file__).resolve().parent.parent
RESULTS_JSON = Path(__file__).resolve().parent / "results.json"
APP = "bench.apps"
WORKERS = 2
WORKER_CONCURRENCY = 64
SCHEDULERS = 0  # 0: every worker runs with --with-scheduler (the layout)
READY_TIMEOUT = 60.0
STOP_TIMEOUT = 20.0
# A healthy run here takes seconds; a stuck one should cost a minute, not the budget.
RUN_TIMEOUT = 60.0
FLOOR_TIMEOUT = 10.0
FLOOR_ATTEMPTS = 3
SLEEP_TARGET_MS = 100.0
IDLE_SECONDS = 3.0
SCENARIOS = ("fanout", "many", "chain", "long", "soak", "sleep")


@dataclass(frozen=True)
class Sizes:
    """How big each scenario is; --quick shrinks the ones whose time grows with size."""

    floor_amqp: int
    floor_redis: int
    fanout: int
    many_runs: int
    chain: int
    long: int
    soak_waves: int = 2000
    soak_width: int = 100
    sleepers: int = 50
    sleep_seconds: float = 1.0
    long_window: int = 100

    @classmethod
    def pick(cls, quick: bool) -> Sizes:
        if quick:
            return cls(
                floor_amqp=500,
                floor_redis=2000,
                fanout=500,
                many_runs=50,
                chain=100,
                long=400,
                soak_waves=200,
            )
        return cls(
            floor_amqp=2000,
            floor_redis=5000,
            fanout=10_000,
            many_runs=1000,
            chain=2000,
            long=10_000,
        )


# --- statistics --------------------------------------------------------------------------


def pct(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile; None for no data (JSON has no NaN)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, math.ceil(q / 100.0 * len(ordered)) - 1))
    return float(ordered[rank])


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or denominator == 0:
        return None
    return numerator / denominator


def fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


# --- CPU accounting ----------------------------------------------------------------------

CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_cpu_seconds(pid: int) -> float | None:
    """utime + stime of one process (children excluded), from /proc."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def machine_busy_seconds() -> float:
    """CPU-seconds the whole machine spent busy (all cores), from /proc/stat."""
    parts = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = parts[3] + (parts[4] if len(parts) > 4 else 0)
    return (sum(parts[:8]) - idle) / CLK_TCK


def find_server_pids() -> dict[str, list[int]]:
    """PIDs of the local RabbitMQ (beam.smp) and Redis, to account for their CPU."""
    found: dict[str, list[int]] = {"rabbitmq": [], "redis": []}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            comm = (entry / "comm").read_text().strip()
        except OSError:
            continue
        if comm == "beam.smp":
            found["rabbitmq"].append(int(entry.name))
        elif comm == "redis-server":
            found["redis"].append(int(entry.name))
    return found


class CpuMeter:
    """Snapshots CPU time per component so each scenario can say what was busy."""

    def __init__(self, components: dict[str, list[int]]) -> None:
        self.components = components

    def snapshot(self) -> dict[str, float]:
        snap = {"machine": machine_busy_seconds(), "bench client": time.process_time()}
        for name, pids in self.components.items():
            snap[name] = sum(proc_cpu_seconds(pid) or 0.0 for pid in pids)
        return snap

    @staticmethod
    def percent(before: dict[str, float], after: dict[str, float], wall: float) -> dict[str, float]:
        """Per component, % of one core over ``wall``; "others" is what nobody here used."""
        used = {k: (after[k] - before[k]) / wall * 100.0 for k in before if wall > 0}
        accounted = sum(v for k, v in used.items() if k != "machine")
        used["others"] = max(0.0, used.get("machine", 0.0) - accounted)
        return {k: round(v, 1) for k, v in used.items()}


# --- processes ---------------------------------------------------------------------------


@dataclass
class Proc:
    label: str
    command: list[str]
    process: asyncio.subprocess.Process
    log: Path


def cli_env(settings: Settings) -> dict[str, str]:
    return {
        **os.environ,
        "LEDGERFLOW_AMQP_URL": settings.amqp_url,
        "LEDGERFLOW_REDIS_URL": settings.redis_url,
        "LEDGERFLOW_NAMESPACE": settings.namespace,
        "LEDGERFLOW_LOG_LEVEL": "warning",
        "PYTHONPATH": str(ROOT),
    }


def open_log(path: Path) -> BinaryIO:
    """A process's log file (the child keeps its own copy of the descriptor)."""
    return open(path, "wb")


async def start_processes(settings: Settings, log_dir: Path, *, loop: str) -> list[Proc]:
    """Workers and a scheduler as real CLI processes; logs to files, never to a pipe.

    (A pipe nobody reads blocks the process the moment it logs a burst.)
    """
    launcher = ["-m", "ledgerflow", "--loop", loop]
    commands = [
        (
            f"worker-{i + 1}",
            ["worker", APP, "--concurrency", str(WORKER_CONCURRENCY), "--grace", "5"]
            + (["--with-scheduler"] if SCHEDULERS == 0 else []),
        )
        for i in range(WORKERS)
    ] + [(f"scheduler-{i + 1}", ["scheduler", APP]) for i in range(SCHEDULERS)]
    procs = []
    for label, command in commands:
        log = log_dir / f"{label}.log"
        with open_log(log) as log_file:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                *launcher,
                *command,
                env=cli_env(settings),
                cwd=ROOT,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=log_file,
            )
        procs.append(Proc(label, command, process, log))
    return procs


async def stop_processes(procs: Sequence[Proc]) -> None:
    """SIGTERM all, then SIGKILL whatever has not exited after STOP_TIMEOUT."""
    for proc in procs:
        if proc.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.process.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            await asyncio.wait_for(proc.process.wait(), STOP_TIMEOUT)
        except TimeoutError:
            print(f"  {proc.label} ignored SIGTERM for {STOP_TIMEOUT:g} s: SIGKILL")
            with contextlib.suppress(ProcessLookupError):
                proc.process.kill()
            await proc.process.wait()


def log_line_counts(procs: Sequence[Proc]) -> dict[str, int]:
    return {label: len(lines) for label, lines in log_problems(procs).items()}


def new_log_lines(procs: Sequence[Proc], before: dict[str, int]) -> list[str]:
    """Lines logged since ``before``: any means the scenario ran through trouble."""
    out = []
    for label, lines in log_problems(procs).items():
        out += [f"{label}: {line}" for line in lines[before.get(label, 0) :]]
    return out


def log_problems(procs: Sequence[Proc]) -> dict[str, list[str]]:
    """Warning/error lines each process logged (they run at LEDGERFLOW_LOG_LEVEL=warning)."""
    problems: dict[str, list[str]] = {}
    for proc in procs:
        try:
            lines = proc.log.read_text(errors="replace").splitlines()
        except OSError:
            continue
        problems[proc.label] = [line for line in lines if line.strip()]
    return problems


async def consumer_count(connection: aio_pika.abc.AbstractConnection, queue: str) -> int:
    """Consumers on a queue, by a passive declare on a throwaway channel."""
    channel = await connection.channel()
    try:
        declared = await channel.declare_queue(queue, passive=True)
        return int(declared.declaration_result.consumer_count or 0)
    finally:
        with contextlib.suppress(Exception):
            await channel.close()


async def wait_until_consuming(
    amqp_url: str, names: Names, procs: Sequence[Proc], timeout: float = READY_TIMEOUT
) -> float:
    """Block until RabbitMQ shows every worker and scheduler consuming; returns seconds."""
    began = time.monotonic()
    connection = await aio_pika.connect(amqp_url)
    try:
        while True:
            dead = [p for p in procs if p.process.returncode is not None]
            if dead:
                tail = dead[0].log.read_text(errors="replace")[-2000:]
                raise RuntimeError(
                    f"{dead[0].label} exited with {dead[0].process.returncode}:\n{tail}"
                )
            steps = await consumer_count(connection, names.step_queue())
            runs = await consumer_count(connection, names.runs_queue)
            if steps >= WORKERS and runs >= (SCHEDULERS or WORKERS):
                return time.monotonic() - began
            if time.monotonic() - began > timeout:
                raise RuntimeError(
                    f"processes not consuming after {timeout:g} s "
                    f"(step consumers {steps}/{WORKERS}, run consumers {runs}/{SCHEDULERS})"
                )
            await asyncio.sleep(0.1)
    finally:
        await connection.close()


# --- cleanup -----------------------------------------------------------------------------


async def delete_namespace(settings: Settings, extra_queues: Sequence[str]) -> dict[str, int]:
    """Delete the namespace's Redis keys, queues and exchanges; every step best-effort."""
    names = Names(settings.namespace)
    deleted = {"redis_keys": 0, "queues": 0, "exchanges": 0}
    with contextlib.suppress(Exception):
        client = aioredis.Redis.from_url(settings.redis_url)
        try:
            batch: list[Any] = []
            async for key in client.scan_iter(match=names.key_pattern(), count=1000):
                batch.append(key)
                if len(batch) >= 500:
                    deleted["redis_keys"] += int(await client.unlink(*batch))
                    batch = []
            if batch:
                deleted["redis_keys"] += int(await client.unlink(*batch))
        finally:
            await client.aclose()
    queues = [names.step_queue(), names.runs_queue, names.dead_queue, *extra_queues]
    exchanges = [names.exchange, names.dead_exchange]
    with contextlib.suppress(Exception):
        connection = await aio_pika.connect(settings.amqp_url)
        try:
            for queue in queues:
                # A fresh channel each: a refused operation closes the channel it ran on.
                with contextlib.suppress(Exception):
                    channel = await connection.channel()
                    await channel.queue_delete(queue)
                    deleted["queues"] += 1
                    await channel.close()
            for exchange in exchanges:
                with contextlib.suppress(Exception):
                    channel = await connection.channel()
                    await channel.exchange_delete(exchange)
                    deleted["exchanges"] += 1
                    await channel.close()
        finally:
            await connection.close()
    with contextlib.suppress(Exception):
        client = aioredis.Redis.from_url(settings.redis_url)
        try:
            left = [k async for k in client.scan_iter(match=names.key_pattern(), count=1000)]
            deleted["redis_keys_left"] = len(left)
        finally:
            await client.aclose()
    return deleted


# --- the floor ---------------------------------------------------------------------------


@dataclass
class Floor:
    """What bare clients achieve on this machine, now: the denominators of every ratio."""

    amqp_rtt_p50_ms: float | None = None
    amqp_rtt_p99_ms: float | None = None
    amqp_sequential_msgs_per_s: float | None = None
    amqp_pipelined_msgs_per_s: float | None = None
    amqp_pipelined_p50_ms: float | None = None
    redis_xadd_p50_ms: float | None = None
    redis_xadd_p99_ms: float | None = None
    redis_xadd_ops_per_s: float | None = None
    messages: int = 0
    xadds: int = 0
    attempts: int = 1


async def amqp_floor(amqp_url: str, queue_name: str, n: int, floor: Floor) -> None:
    """Bare aio-pika, set up as ledgerflow sets itself up.

    A quorum queue, persistent messages, ``mandatory``, publisher confirms on one
    channel and a manual-ack consumer on another. Measured twice: one message at a
    time (the round-trip latency floor for a chain of steps) and all ``n`` in
    flight at once (the throughput floor for a fan-out).
    """
    connection = await aio_pika.connect(amqp_url, timeout=FLOOR_TIMEOUT)
    try:
        publish_channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        consume_channel = await connection.channel(publisher_confirms=False)
        await consume_channel.set_qos(prefetch_count=WORKER_CONCURRENCY)
        queue = await consume_channel.declare_queue(
            queue_name, durable=True, arguments={"x-queue-type": "quorum"}
        )
        await queue.purge()
        loop = asyncio.get_running_loop()
        sent: dict[str, float] = {}
        arrived: dict[str, float] = {}
        waiting: dict[str, asyncio.Future[None]] = {}
        all_in = asyncio.Event()
        expected = 0

        async def on_message(message: AbstractIncomingMessage) -> None:
            key = message.message_id or ""
            arrived[key] = time.perf_counter()
            await message.ack()
            future = waiting.pop(key, None)
            if future is not None and not future.done():
                future.set_result(None)
            if len(arrived) >= expected:
                all_in.set()

        tag = await queue.consume(on_message, no_ack=False)

        async def publish(key: str) -> None:
            sent[key] = time.perf_counter()
            await publish_channel.default_exchange.publish(
                aio_pika.Message(
                    key.encode(), message_id=key, delivery_mode=aio_pika.DeliveryMode.PERSISTENT
                ),
                routing_key=queue_name,
                mandatory=True,
            )

        # One at a time: publish (confirmed), wait for the consumer to have it and ack.
        expected = n
        began = time.perf_counter()
        for i in range(n):
            key = f"seq-{i}"
            # Held here too: the consumer may pop it before the confirm comes back.
            got = waiting[key] = loop.create_future()
            await publish(key)
            # A plain connection does not survive a broker restart: never wait forever.
            await asyncio.wait_for(got, FLOOR_TIMEOUT)
        elapsed = time.perf_counter() - began
        rtts = [(arrived[k] - sent[k]) * 1000.0 for k in sent]
        floor.amqp_rtt_p50_ms = pct(rtts, 50)
        floor.amqp_rtt_p99_ms = pct(rtts, 99)
        floor.amqp_sequential_msgs_per_s = n / elapsed

        # All in flight: every confirm awaited together, as ledgerflow's publish_many does.
        sent.clear()
        arrived.clear()
        all_in.clear()
        began = time.perf_counter()
        await asyncio.gather(*(publish(f"pipe-{i}") for i in range(n)))
        await asyncio.wait_for(all_in.wait(), 3 * FLOOR_TIMEOUT)
        elapsed = time.perf_counter() - began
        floor.amqp_pipelined_msgs_per_s = n / elapsed
        floor.amqp_pipelined_p50_ms = pct([(arrived[k] - sent[k]) * 1000.0 for k in sent], 50)
        floor.messages = n
        await queue.cancel(tag)
    finally:
        await connection.close()


async def redis_floor(redis_url: str, key: str, n: int, floor: Floor) -> None:
    """Bare redis-py (hiredis) XADD, one at a time: the floor under every log append."""
    client = aioredis.Redis.from_url(redis_url)
    try:
        await client.ping()
        times: list[float] = []
        began = time.perf_counter()
        for i in range(n):
            t0 = time.perf_counter()
            await client.xadd(key, {"type": "step_completed", "corr": f"s{i}", "data": b"\x90"})
            times.append((time.perf_counter() - t0) * 1000.0)
        elapsed = time.perf_counter() - began
        await client.delete(key)
    finally:
        await client.aclose()
    floor.redis_xadd_p50_ms = pct(times, 50)
    floor.redis_xadd_p99_ms = pct(times, 99)
    floor.redis_xadd_ops_per_s = n / elapsed
    floor.xadds = n


async def measure_floor(settings: Settings, sizes: Sizes, floor_queue: str) -> Floor:
    """The floor, measured again from scratch if a broker restart (another tenant's outage
    test, on this shared machine) breaks it: a floor measured across a restart is no floor."""
    for attempt in range(1, FLOOR_ATTEMPTS + 1):
        floor = Floor()
        try:
            await amqp_floor(settings.amqp_url, floor_queue, sizes.floor_amqp, floor)
            await redis_floor(
                settings.redis_url, f"{settings.namespace}:bench-floor", sizes.floor_redis, floor
            )
        except Exception as exc:
            if attempt == FLOOR_ATTEMPTS:
                raise
            print(f"  floor attempt {attempt} failed ({type(exc).__name__}: {exc}); again in 5 s")
            await asyncio.sleep(5.0)
        else:
            floor.attempts = attempt
            return floor
    raise AssertionError("unreachable")


# --- reading a run's log -----------------------------------------------------------------


@dataclass
class StepTimes:
    """First step_created / step_started / step_completed ts of each step, in call order."""

    corrs: list[str] = field(default_factory=list)
    created: dict[str, int] = field(default_factory=dict)
    started: dict[str, int] = field(default_factory=dict)
    completed: dict[str, int] = field(default_factory=dict)
    starts: int = 0
    retries: int = 0
    failures: int = 0

    @classmethod
    def of(cls, events: Sequence[Event]) -> StepTimes:
        times = cls()
        for event in events:
            if event.type is EventType.STEP_CREATED:
                if event.corr not in times.created:
                    times.corrs.append(event.corr)
                times.created.setdefault(event.corr, event.ts)
            elif event.type is EventType.STEP_STARTED:
                times.starts += 1
                times.started.setdefault(event.corr, event.ts)
            elif event.type is EventType.STEP_COMPLETED:
                times.completed.setdefault(event.corr, event.ts)
            elif event.type is EventType.STEP_RETRYING:
                times.retries += 1
            elif event.type is EventType.STEP_FAILED:
                times.failures += 1
        return times

    def latencies(self, corrs: Sequence[str] | None = None) -> list[float]:
        """step_created -> step_completed, ms."""
        return [
            float(self.completed[c] - self.created[c])
            for c in (self.corrs if corrs is None else corrs)
            if c in self.completed
        ]

    def gaps(self, corrs: Sequence[str] | None = None) -> list[float]:
        """Previous step_completed -> this step_started, ms (sequential steps only)."""
        order = self.corrs
        wanted = set(order if corrs is None else corrs)
        out = []
        for prev, cur in itertools.pairwise(order):
            if cur in wanted and prev in self.completed and cur in self.started:
                out.append(float(self.started[cur] - self.completed[prev]))
        return out

    def hops(self) -> dict[str, list[float]]:
        """A sequential step's cycle split where the log can split it, ms.

        schedule: previous step_completed -> this step_created (worker's activation
        publish, scheduler consume, read, replay, append); dispatch: step_created ->
        step_started (step publish, worker consume, append); execute: step_started ->
        step_completed (run the step, append the outcome).
        """
        out: dict[str, list[float]] = {"schedule": [], "dispatch": [], "execute": []}
        for prev, cur in itertools.pairwise(self.corrs):
            if prev in self.completed and cur in self.started and cur in self.completed:
                out["schedule"].append(float(self.created[cur] - self.completed[prev]))
                out["dispatch"].append(float(self.started[cur] - self.created[cur]))
                out["execute"].append(float(self.completed[cur] - self.started[cur]))
        return out

    def cycles(self, corrs: Sequence[str] | None = None) -> list[float]:
        """Previous step_completed -> this step_completed, ms: the full per-step cost."""
        order = self.corrs
        wanted = set(order if corrs is None else corrs)
        return [
            float(self.completed[cur] - self.completed[prev])
            for prev, cur in itertools.pairwise(order)
            if cur in wanted and prev in self.completed and cur in self.completed
        ]


def run_span_ms(events: Sequence[Event]) -> float | None:
    """run_created -> run's terminal event, ms."""
    if not events:
        return None
    end = next((e for e in reversed(events) if e.type is EventType.RUN_COMPLETED), None)
    return None if end is None else float(end.ts - events[0].ts)


# --- scenarios ---------------------------------------------------------------------------


@dataclass
class Context:
    client: lf.Client
    sizes: Sizes
    floor: Floor
    names: Names
    log_dir: Path
    redis_url: str
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


ScenarioFn = Callable[[Context], Awaitable[dict[str, Any]]]


async def read_all(client: lf.Client, run_ids: Sequence[str]) -> list[list[Event]]:
    """Read many logs with bounded concurrency (the store's pool has 64 connections)."""
    gate = asyncio.Semaphore(32)

    async def one(run_id: str) -> list[Event]:
        async with gate:
            return await client.events(run_id)

    return list(await asyncio.gather(*(one(r) for r in run_ids)))


def integrity(times: StepTimes, expected_steps: int) -> dict[str, int]:
    """Counts that must be boring: every step created and completed once, nothing retried."""
    return {
        "steps_created": len(times.created),
        "steps_completed": len(times.completed),
        "expected_steps": expected_steps,
        "extra_step_starts": times.starts - len(times.started),
        "step_retries": times.retries,
        "step_failures": times.failures,
    }


def merge(into: StepTimes, other: StepTimes, prefix: str) -> None:
    for corr in other.corrs:
        key = f"{prefix}/{corr}"
        into.corrs.append(key)
        into.created[key] = other.created[corr]
        if corr in other.started:
            into.started[key] = other.started[corr]
        if corr in other.completed:
            into.completed[key] = other.completed[corr]
    into.starts += other.starts
    into.retries += other.retries
    into.failures += other.failures


async def scenario_fanout(ctx: Context) -> dict[str, Any]:
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
    return {
        "steps": n,
        "wall_s": wall,
        "steps_per_s": steps_per_s,
        "step_p50_ms": pct(lat, 50),
        "step_p99_ms": pct(lat, 99),
        "run_span_ms": run_span_ms(events),
        "ratio_to_floor": ratio(steps_per_s, ctx.floor.amqp_pipelined_msgs_per_s),
        "ratio_name": "steps/s / floor pipelined msgs/s",
        "correct": result == sum(range(n)),
        "integrity": integrity(times, n),
    }


async def scenario_many(ctx: Context) -> dict[str, Any]:
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
    return {
        "steps": steps,
        "runs": runs_n,
        "wall_s": wall,
        "steps_per_s": steps_per_s,
        "runs_per_s": runs_n / wall,
        "step_p50_ms": pct(lat, 50),
        "step_p99_ms": pct(lat, 99),
        "run_p50_ms": pct(spans, 50),
        "run_p99_ms": pct(spans, 99),
        "ratio_to_floor": ratio(steps_per_s, ctx.floor.amqp_pipelined_msgs_per_s),
        "ratio_name": "steps/s / floor pipelined msgs/s",
        "correct": results == [sum(range(width))] * runs_n,
        "integrity": integrity(merged, steps),
    }


async def scenario_chain(ctx: Context) -> dict[str, Any]:
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
    return {
        "steps": n,
        "wall_s": wall,
        "steps_per_s": n / wall,
        "step_p50_ms": pct(lat, 50),
        "step_p99_ms": pct(lat, 99),
        "step_to_step_p50_ms": gap_p50,
        "step_to_step_p99_ms": pct(gaps, 99),
        "cycle_p50_ms": pct(cycles, 50),
        "cycle_mean_ms": mean(cycles),
        "hop_mean_ms": {k: mean(v) for k, v in times.hops().items()},
        "ratio_to_floor": ratio(gap_p50, ctx.floor.amqp_rtt_p50_ms),
        "ratio_name": "step-to-step p50 / floor AMQP round-trip p50",
        "step_ratio_to_floor": ratio(pct(lat, 50), ctx.floor.amqp_rtt_p50_ms),
        "correct": result == n,
        "integrity": integrity(times, n),
    }


async def sample_progress(
    ctx: Context, run_id: str, samples: list[tuple[int, float]], every: float = 0.2
) -> None:
    """(events in the run's log, scheduler CPU seconds) every ``every`` s, until cancelled.

    Latency has ms resolution and a noisy neighbourhood; CPU per step, early vs
    late in one run, is the sharper test of per-activation cost growing with the log.
    """
    client = aioredis.Redis.from_url(ctx.redis_url)
    stream = ctx.names.stream(run_id)
    try:
        while True:
            length = int(await client.xlen(stream))
            cpu = sum(proc_cpu_seconds(pid) or 0.0 for pid in ctx.scheduler_pids)
            samples.append((length, cpu))
            await asyncio.sleep(every)
    finally:
        await client.aclose()


def cpu_per_step_ms(samples: Sequence[tuple[int, float]], lo: float, hi: float) -> float | None:
    """Scheduler CPU ms per step between the samples nearest ``lo`` and ``hi`` of the log."""
    if len(samples) < 3:
        return None
    total = samples[-1][0]
    start = min(samples, key=lambda s: abs(s[0] - lo * total))
    end = min(samples, key=lambda s: abs(s[0] - hi * total))
    steps = (end[0] - start[0]) / 3.0  # step_created, step_started, step_completed
    return (end[1] - start[1]) * 1000.0 / steps if steps > 0 else None


async def scenario_long(ctx: Context) -> dict[str, Any]:
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
    return {
        "steps": n,
        "wall_s": wall,
        "steps_per_s": n / wall,
        "step_p50_ms": pct(times.latencies(), 50),
        "step_p99_ms": pct(times.latencies(), 99),
        "first_step_p50_ms": pct(lat_first, 50),
        "last_step_p50_ms": pct(lat_last, 50),
        "first_gap_p50_ms": pct(gap_first, 50),
        "last_gap_p50_ms": pct(gap_last, 50),
        "first_cycle_mean_ms": mean(cyc_first),
        "last_cycle_mean_ms": mean(cyc_last),
        "scheduler_cpu_ms_per_step_first_fifth": cpu_early,
        "scheduler_cpu_ms_per_step_last_fifth": cpu_late,
        "scheduler_cpu_ratio": ratio(cpu_late, cpu_early),
        "ratio_to_floor": ratio(pct(lat_last, 50), pct(lat_first, 50)),
        "ratio_name": f"step p50, last {window} / first {window}",
        "gap_ratio": ratio(pct(gap_last, 50), pct(gap_first, 50)),
        "cycle_mean_ratio": ratio(mean(cyc_last), mean(cyc_first)),
        "summary_extra": (
            f"; cycle mean x{fmt(ratio(mean(cyc_last), mean(cyc_first)), 2)}; scheduler "
            f"CPU/step last/first fifth x{fmt(ratio(cpu_late, cpu_early), 2)}"
        ),
        "correct": result == n,
        "integrity": integrity(times, n),
    }


def rss_kib(pid: int) -> int | None:
    """Resident set size from /proc, in KiB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


async def sample_rss(
    ctx: Context, run_id: str, samples: list[tuple[int, dict[str, int | None]]]
) -> None:
    """(events in the run's log, RSS of every process) every 0.5 s, until cancelled."""
    client = aioredis.Redis.from_url(ctx.redis_url)
    stream = ctx.names.stream(run_id)
    try:
        while True:
            length = int(await client.xlen(stream))
            samples.append((length, {k: rss_kib(p) for k, p in ctx.process_pids.items()}))
            await asyncio.sleep(0.5)
    finally:
        await client.aclose()


async def scenario_soak(ctx: Context) -> dict[str, Any]:
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
    logged = await ctx.client.store.client.xlen(ctx.names.stream(run_id))
    return {
        "steps": n,
        "waves": waves,
        "width": width,
        "wall_s": wall,
        "steps_per_s": n / wall,
        "step_p50_ms": None,
        "step_p99_ms": None,
        "rss_kib_at_tenth": early,
        "rss_kib_at_end": late,
        "rss_growth_percent": growth,
        "rss_worst_growth_percent": worst,
        "rss_mib_by_tenth": curve,
        "passed": worst is not None and worst < 10.0,
        "events": int(logged),
        "ratio_to_floor": worst,
        "ratio_name": "worst RSS growth %, a tenth of the way -> end",
        "correct": result == n * (width - 1) // 2,
        "integrity": {},
    }


async def scenario_sleep(ctx: Context) -> dict[str, Any]:
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
    return {
        "steps": 0,
        "runs": n,
        "sleep_s": seconds,
        "wall_s": wall,
        "steps_per_s": None,
        "late_p50_ms": pct(lateness, 50),
        "late_p99_ms": pct(lateness, 99),
        "late_max_ms": worst,
        "late_min_ms": min(lateness) if lateness else None,
        "wake_to_run_completed_p50_ms": pct(wake_to_end, 50),
        # due = the last event's ts + the delay (replay-safe lf.now()), so this can be
        # a little under the requested sleep: the workflow's clock lags wait_created.
        "slept_p50_ms": pct(slept, 50),
        "slept_min_ms": min(slept) if slept else None,
        "slept_max_ms": max(slept) if slept else None,
        "target_ms": SLEEP_TARGET_MS,
        "passed": worst is not None and len(lateness) == n and worst <= SLEEP_TARGET_MS,
        "ratio_to_floor": None,
        "ratio_name": "",
        "correct": results == [seconds] * n,
    }


SCENARIO_FNS: dict[str, ScenarioFn] = {
    "fanout": scenario_fanout,
    "many": scenario_many,
    "chain": scenario_chain,
    "long": scenario_long,
    "soak": scenario_soak,
    "sleep": scenario_sleep,
}


def describe(name: str, r: dict[str, Any]) -> str:
    """One scenario's figures as the lines printed under it."""
    cpu = ", ".join(f"{k} {v:.0f}%" for k, v in r["cpu_percent_of_one_core"].items())
    lines = []
    if name == "sleep":
        verdict = "PASS" if r["passed"] else "FAIL"
        lines.append(
            f"  {r['runs']} sleepers x {r['sleep_s']:g} s: lateness "
            f"p50 {fmt(r['late_p50_ms'], 0)} ms, p99 {fmt(r['late_p99_ms'], 0)} ms, "
            f"max {fmt(r['late_max_ms'], 0)} ms (min {fmt(r['late_min_ms'], 0)} ms) -> "
            f"{verdict} (target: max <= {SLEEP_TARGET_MS:g} ms)"
        )
        lines.append(
            f"  wake -> run_completed p50 {fmt(r['wake_to_run_completed_p50_ms'], 0)} ms; "
            f"slept (wait_created -> wait_completed) min {fmt(r['slept_min_ms'], 0)}, p50 "
            f"{fmt(r['slept_p50_ms'], 0)}, max {fmt(r['slept_max_ms'], 0)} ms; "
            f"wall {r['wall_s']:.2f} s"
        )
    else:
        lines.append(
            f"  {r['steps']} steps in {r['wall_s']:.2f} s = {fmt(r['steps_per_s'], 0)} steps/s; "
            f"step latency p50 {fmt(r['step_p50_ms'], 0)} ms, p99 {fmt(r['step_p99_ms'], 0)} ms"
        )
        if name == "many":
            lines.append(
                f"  {r['runs']} runs: {fmt(r['runs_per_s'], 1)} runs/s; run duration p50 "
                f"{fmt(r['run_p50_ms'], 0)} ms, p99 {fmt(r['run_p99_ms'], 0)} ms"
            )
        if name == "chain":
            lines.append(
                f"  step-to-step (completed -> next started) p50 "
                f"{fmt(r['step_to_step_p50_ms'], 0)} ms, p99 {fmt(r['step_to_step_p99_ms'], 0)} "
                f"ms; full cycle p50 {fmt(r['cycle_p50_ms'], 0)} ms, mean "
                f"{fmt(r['cycle_mean_ms'], 2)} ms"
            )
            hop = r["hop_mean_ms"]
            lines.append(
                f"  cycle split (means): schedule {fmt(hop['schedule'], 2)} ms (completed -> next "
                f"created), dispatch {fmt(hop['dispatch'], 2)} ms (created -> started), execute "
                f"{fmt(hop['execute'], 2)} ms (started -> completed)"
            )
        if name == "soak":
            start, end = r["rss_kib_at_tenth"] or {}, r["rss_kib_at_end"] or {}
            per = ", ".join(
                f"{k} {fmt((start.get(k) or 0) / 1024, 1)} -> {fmt((end.get(k) or 0) / 1024, 1)} "
                f"MiB ({fmt(g, 1)} %)"
                for k, g in r["rss_growth_percent"].items()
            )
            verdict = "PASS" if r["passed"] else "FAIL"
            lines.append(f"  RSS a tenth of the way -> end: {per} -> {verdict} (target < 10 %)")
            lines.append(f"  RSS (MiB, largest process) at each tenth: {r['rss_mib_by_tenth']}")
        if name == "long":
            lines.append(
                f"  first 100 vs last 100: step p50 {fmt(r['first_step_p50_ms'], 0)} -> "
                f"{fmt(r['last_step_p50_ms'], 0)} ms; step-to-step p50 "
                f"{fmt(r['first_gap_p50_ms'], 0)} -> {fmt(r['last_gap_p50_ms'], 0)} ms "
                f"(x{fmt(r['gap_ratio'], 2)}); cycle mean {fmt(r['first_cycle_mean_ms'], 2)} -> "
                f"{fmt(r['last_cycle_mean_ms'], 2)} ms (x{fmt(r['cycle_mean_ratio'], 2)})"
            )
            lines.append(
                f"  scheduler CPU per step: first fifth of the run "
                f"{fmt(r['scheduler_cpu_ms_per_step_first_fifth'], 2)} ms, last fifth "
                f"{fmt(r['scheduler_cpu_ms_per_step_last_fifth'], 2)} ms "
                f"(x{fmt(r['scheduler_cpu_ratio'], 2)})"
            )
        lines.append(f"  ratio: {r['ratio_name']} = {fmt(r['ratio_to_floor'], 3)}")
    lines.append(f"  CPU (% of one core): {cpu}")
    checks = r.get("integrity", {})
    suspicious = {
        k: v
        for k, v in checks.items()
        if (k in ("extra_step_starts", "step_retries", "step_failures") and v)
        or (k in ("steps_created", "steps_completed") and v != checks.get("expected_steps"))
    }
    if not r["correct"] or suspicious:
        lines.append(f"  !! result correct: {r['correct']}; integrity: {checks}")
    return "\n".join(lines)


async def slow_commands(settings: Settings) -> list[dict[str, Any]]:
    """This namespace's entries in Redis's SLOWLOG (over slowlog-log-slower-than, 10 ms by
    default): one Lua call blocks every other client for its whole duration."""
    found: list[dict[str, Any]] = []
    with contextlib.suppress(Exception):
        client = aioredis.Redis.from_url(settings.redis_url)
        try:
            for entry in await client.slowlog_get(128):
                command = entry.get("command", b"")
                text = command.decode(errors="replace") if isinstance(command, bytes) else command
                if settings.namespace in str(text):
                    name = str(text).split(" ", 1)[0]
                    found.append({"ms": entry["duration"] / 1000.0, "command": name})
        finally:
            await client.aclose()
    return found


# --- main --------------------------------------------------------------------------------


def code_version() -> dict[str, Any]:
    """Which code was measured: HEAD and any uncommitted product files (the tree is shared)."""
    version: dict[str, Any] = {"commit": "?", "uncommitted": []}
    with contextlib.suppress(Exception):
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        )
        version["commit"] = head.stdout.strip() or "?"
        status = subprocess.run(
            ["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True
        )
        version["uncommitted"] = [
            line[3:] for line in status.stdout.splitlines() if not line[3:].startswith("bench/")
        ]
    return version


def machine_info() -> dict[str, Any]:
    mem_kb = 0
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    return {
        "nproc": os.cpu_count(),
        "memory_gib": round(mem_kb / 1024 / 1024, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_avg_at_start": os.getloadavg(),
    }


async def server_versions(settings: Settings) -> dict[str, str]:
    versions = {"rabbitmq": "?", "redis": "?"}
    with contextlib.suppress(Exception):
        connection = await aio_pika.connect(settings.amqp_url)
        try:
            transport: Any = connection.transport
            props = transport.connection.server_properties
            raw = props.get("version", "?")
            versions["rabbitmq"] = raw.decode() if isinstance(raw, bytes) else str(raw)
        finally:
            await connection.close()
    with contextlib.suppress(Exception):
        client = aioredis.Redis.from_url(settings.redis_url)
        try:
            info = await client.info("server")
            versions["redis"] = str(info.get("redis_version", "?"))
        finally:
            await client.aclose()
    return versions


def summary_table(floor: Floor, results: dict[str, dict[str, Any]]) -> str:
    header = (
        f"{'scenario':<10} {'steps':>6} {'wall s':>7} {'steps/s':>8} {'p50 ms':>7} "
        f"{'p99 ms':>7}  ratio"
    )
    rows = [header, "-" * len(header) + "-" * 40]
    rows.append(
        f"{'floor':<10} {floor.messages:>6} {'':>7} {fmt(floor.amqp_pipelined_msgs_per_s, 0):>8} "
        f"{fmt(floor.amqp_rtt_p50_ms, 2):>7} {fmt(floor.amqp_rtt_p99_ms, 2):>7}  "
        f"AMQP msgs/s (all in flight), round trip p50/p99; Redis XADD p50 "
        f"{fmt(floor.redis_xadd_p50_ms, 3)} ms, {fmt(floor.redis_xadd_ops_per_s, 0)} ops/s"
    )
    for name, r in results.items():
        if "error" in r:
            rows.append(f"{name:<10} FAILED: {r['error'][:300]}")
            continue
        mark = "  [DISTURBED: see above]" if r.get("disturbed") else ""
        if name == "sleep":
            verdict = "PASS" if r["passed"] else "FAIL"
            rows.append(
                f"{name:<10} {r['runs']:>6} {r['wall_s']:>7.2f} {'-':>8} "
                f"{fmt(r['late_p50_ms'], 0):>7} {fmt(r['late_p99_ms'], 0):>7}  lateness; max "
                f"{fmt(r['late_max_ms'], 0)} ms <= {SLEEP_TARGET_MS:g} ms: {verdict}{mark}"
            )
            continue
        p50 = r["step_to_step_p50_ms"] if name == "chain" else r["step_p50_ms"]
        p99 = r["step_to_step_p99_ms"] if name == "chain" else r["step_p99_ms"]
        rows.append(
            f"{name:<10} {r['steps']:>6} {r['wall_s']:>7.2f} {fmt(r['steps_per_s'], 0):>8} "
            f"{fmt(p50, 0):>7} {fmt(p99, 0):>7}  {fmt(r['ratio_to_floor'], 3)} "
            f"({r['ratio_name']}){r.get('summary_extra', '')}{mark}"
        )
    return "\n".join(rows)


@contextlib.asynccontextmanager
async def namespace_cleanup(settings: Settings, floor_queue: str) -> AsyncIterator[None]:
    """Whatever happens inside, delete the namespace afterwards."""
    try:
        yield
    finally:
        deleted = await delete_namespace(settings, [floor_queue])
        print(
            f"\ncleanup: namespace {settings.namespace}: {deleted['redis_keys']} Redis keys, "
            f"{deleted['queues']} queues, {deleted['exchanges']} exchanges deleted; "
            f"{deleted.get('redis_keys_left', '?')} keys left"
        )


async def bench(args: argparse.Namespace) -> int:
    sizes = Sizes.pick(args.quick)
    only = args.only or list(SCENARIOS)
    namespace = f"bench-{secrets.token_hex(4)}"
    settings = Settings.from_env(namespace=namespace)
    names = Names(namespace)
    floor_queue = f"{namespace}.bench-floor"
    log_dir = Path(tempfile.mkdtemp(prefix=f"lf-{namespace}-"))
    report: dict[str, Any] = {
        "command": " ".join(["python -m bench.run", *sys.argv[1:]]),
        "quick": args.quick,
        "namespace": namespace,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine_info(),
        "code": code_version(),
        "event_loop": args.loop,
        "processes": {
            "workers": WORKERS,
            "worker_concurrency": WORKER_CONCURRENCY,
            "schedulers": SCHEDULERS,
        },
        "sizes": sizes.__dict__,
    }
    results: dict[str, dict[str, Any]] = {}
    failed = False
    procs: list[Proc] = []
    print(
        f"ledgerflow benchmark{' (--quick)' if args.quick else ''}: namespace {namespace}, "
        f"event loop {report['event_loop']}"
    )
    async with namespace_cleanup(settings, floor_queue):
        report["servers"] = await server_versions(settings)
        info, code = report["machine"], report["code"]
        print(f"code: {code['commit']}, uncommitted product files: {code['uncommitted'] or 'none'}")
        print(
            f"machine: {info['nproc']} CPUs, {info['memory_gib']} GiB, Python {info['python']}, "
            f"RabbitMQ {report['servers']['rabbitmq']}, Redis {report['servers']['redis']}, "
            f"load average {', '.join(f'{x:.2f}' for x in info['load_avg_at_start'])}"
        )
        async with connect(settings) as backends:
            client = lf.Client(backends.store, backends.broker)
            try:
                procs = await start_processes(settings, log_dir, loop=args.loop)
                ready = await wait_until_consuming(settings.amqp_url, names, procs)
                print(
                    f"processes: {WORKERS} workers (--concurrency {WORKER_CONCURRENCY}) and "
                    f"{SCHEDULERS} scheduler, consuming after {ready:.1f} s; logs in {log_dir}"
                )
                components = {p.label: [p.process.pid] for p in procs}
                components.update(find_server_pids())
                cpu = CpuMeter(components)

                # Idle first: what the processes cost doing nothing (the timer loop polls),
                # which is also the background under which the floor is measured.
                before = cpu.snapshot()
                began = time.perf_counter()
                await asyncio.sleep(IDLE_SECONDS)
                idle = CpuMeter.percent(before, cpu.snapshot(), time.perf_counter() - began)
                report["idle_cpu_percent_of_one_core"] = idle
                print(
                    f"idle for {IDLE_SECONDS:g} s, CPU (% of one core): "
                    + ", ".join(f"{k} {v:.0f}%" for k, v in idle.items())
                )

                print(
                    f"\n[floor] bare aio-pika x{sizes.floor_amqp}, bare XADD x{sizes.floor_redis}"
                )
                floor = await measure_floor(settings, sizes, floor_queue)
                report["floor"] = floor.__dict__
                print(
                    f"  AMQP (quorum queue, persistent, confirms): round trip p50 "
                    f"{fmt(floor.amqp_rtt_p50_ms, 2)} ms, p99 {fmt(floor.amqp_rtt_p99_ms, 2)} ms, "
                    f"{fmt(floor.amqp_sequential_msgs_per_s, 0)} msgs/s one at a time; "
                    f"{fmt(floor.amqp_pipelined_msgs_per_s, 0)} msgs/s all in flight"
                )
                print(
                    f"  Redis XADD: p50 {fmt(floor.redis_xadd_p50_ms, 3)} ms, p99 "
                    f"{fmt(floor.redis_xadd_p99_ms, 3)} ms, {fmt(floor.redis_xadd_ops_per_s, 0)} "
                    "ops/s sequential"
                )
                ctx = Context(
                    client=client,
                    sizes=sizes,
                    floor=floor,
                    names=names,
                    log_dir=log_dir,
                    redis_url=settings.redis_url,
                    # With --with-scheduler the workers are the schedulers too.
                    scheduler_pids=[
                        p.process.pid
                        for p in procs
                        if p.label.startswith("sched") or SCHEDULERS == 0
                    ],
                    process_pids={p.label: p.process.pid for p in procs},
                )
                for name in only:
                    print(f"\n[{name}] {SCENARIO_FNS[name].__doc__}")
                    lines_before = log_line_counts(procs)
                    before = cpu.snapshot()
                    began = time.perf_counter()
                    try:
                        result = await SCENARIO_FNS[name](ctx)
                    except Exception as exc:  # report it, run the others, exit non-zero
                        failed = True
                        result = {"error": f"{type(exc).__name__}: {exc}"}
                        print(f"  FAILED: {type(exc).__name__}: {exc}")
                    else:
                        result["cpu_percent_of_one_core"] = CpuMeter.percent(
                            before, cpu.snapshot(), time.perf_counter() - began
                        )
                        print(describe(name, result))
                    disturbed = new_log_lines(procs, lines_before)
                    result["disturbed"] = disturbed
                    results[name] = result
                    if disturbed:
                        print(
                            f"  !! DISTURBED: the processes logged {len(disturbed)} warning/error "
                            f"lines during this scenario (a broker restart by another tenant?); "
                            f"first: {disturbed[0][:200]}"
                        )
                    if not result.get("correct", False):
                        failed = True
                report["queue_depths_at_end"] = await queue_depths(client, names)
                report["redis_slowlog"] = await slow_commands(settings)
                # The floor again, to show how much the machine drifted during the run.
                try:
                    end_floor = await measure_floor(settings, sizes, floor_queue)
                    report["floor_at_end"] = end_floor.__dict__
                except Exception as exc:
                    print(f"\nfloor at the end failed: {type(exc).__name__}: {exc}")
            finally:
                await stop_processes(procs)
        report["exit_codes"] = {p.label: p.process.returncode for p in procs}
        problems = log_problems(procs)
        report["process_log_lines"] = {k: len(v) for k, v in problems.items()}

    report["scenarios"] = results
    report["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    RESULTS_JSON.write_text(json.dumps(report, indent=2, default=str) + "\n")
    end = report.get("floor_at_end") or Floor().__dict__
    print(
        f"\nfloor at the end: AMQP round trip p50 {fmt(end['amqp_rtt_p50_ms'], 2)} ms, "
        f"{fmt(end['amqp_pipelined_msgs_per_s'], 0)} msgs/s in flight; XADD p50 "
        f"{fmt(end['redis_xadd_p50_ms'], 3)} ms (drift check; ratios use the first floor)"
    )
    for label, lines in problems.items():
        if lines:
            print(f"{label}: {len(lines)} warning/error log lines, first: {lines[0][:300]}")
    print(f"exit codes: {report['exit_codes']}")
    print(f"queue depths at the end: {report.get('queue_depths_at_end')}")
    slow = report.get("redis_slowlog") or []
    print(
        f"Redis SLOWLOG entries of this namespace: {len(slow)}"
        + (f", slowest {max(e['ms'] for e in slow):.1f} ms ({slow[0]['command']})" if slow else "")
    )
    print("\nSUMMARY\n" + summary_table(Floor(**report["floor"]), results))
    print(f"\nresults written to {RESULTS_JSON.relative_to(ROOT)}")
    if not failed:
        shutil.rmtree(log_dir, ignore_errors=True)
    else:
        print(f"process logs kept in {log_dir}")
    return 1 if failed else 0


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run",
        description="Benchmark ledgerflow on real RabbitMQ and Redis; the floor always runs.",
    )
    parser.add_argument("--quick", action="store_true", help="smaller sizes (about a minute)")
    parser.add_argument(
        "--only", nargs="+", choices=SCENARIOS, metavar="NAME", help=f"of {', '.join(SCENARIOS)}"
    )
    parser.add_argument(
        "--loop",
        choices=("asyncio", "uvloop"),
        default="uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
        help="event loop of the processes and of the benchmark itself, floor included "
        "(default: uvloop when installed, as the CLI does)",
    )
    return parser.parse_args(argv)


async def amain(args: argparse.Namespace) -> int:
    """SIGTERM cancels the benchmark like Ctrl-C does, so cleanup still runs."""
    task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    if task is not None:
        loop.add_signal_handler(signal.SIGTERM, task.cancel)
    return await bench(args)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return run_with_loop(amain(args), args.loop)  # the same choice the CLI makes
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("interrupted; the namespace was cleaned up", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
