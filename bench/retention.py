"""The retention scenario: a paced stream of short runs whose Redis memory must stay flat.

The claim under test (issue 13): with a retention, Redis holds a bounded set of
runs. Runs finish at the rate they start and the janitor removes each one its
retention later, so once the first retention period has passed, the runs held
and the memory they take stop growing. To measure that claim and nothing else:

* **A Redis of its own.** The shared server's ``used_memory`` moves with every
  other tenant's tests. A ``redis-server`` started here (loopback only, a free
  port, no persistence, every other setting at the same defaults as the shared
  one) holds only this scenario, so ``used_memory`` and ``DBSIZE`` are this
  scenario's. It is stopped at the end. Without a ``redis-server`` binary (a
  Redis in a container) the scenario runs on the shared server and says so.
* **Its processes as deployed.** Two workers with the scheduler role (the
  benchmark's layout) and one ``ledgerflow reconciler`` process at its default
  interval, whose janitor removes the runs (the workflow declares a 2 s
  retention). None of the janitor runs in the benchmark's own process.
* **A defined load.** A capacity phase first starts runs as fast as they
  finish. Once all of them are removed, the paced phase starts
  ``retention_runs`` runs at a fixed rate, ``RETENTION_RATE_FRACTION`` of that
  capacity: a steady state exists only below capacity.
* **A robust judgement.** Once a second: ``used_memory``,
  ``used_memory_dataset``, ``DBSIZE`` and the namespace's run counts (held,
  unfinished, finished awaiting removal, due but not removed yet). The janitor
  removes in sweeps, one per reconciler interval, so every count is a
  saw-tooth; a raw maximum says where a sample fell in a tooth, not whether the
  memory grows. From the end of the warm-up (the first retention period plus
  two reconciler intervals) to the last start the samples are cut into equal
  windows, each many teeth long, and each window is judged by its median:
  flat means the window medians of ``used_memory`` and of the runs held are
  within 10 % of each other.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import shutil
import socket
import statistics
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from ledgerflow.eventlog.names import Names
from ledgerflow.eventlog.redis_client import RedisClient
from ledgerflow.eventlog.store import EventStore
from ledgerflow.scheduler.reconciler import DEFAULT_INTERVAL
from ledgerflow.worker.backend import connect

import ledgerflow as lf
from bench import apps
from bench.config import (
    READY_TIMEOUT,
    RETENTION_CAPACITY_LIVE,
    RETENTION_CAPACITY_S,
    RETENTION_FLAT,
    RETENTION_MAX_BACKLOG_S,
    RETENTION_RATE_FRACTION,
    RETENTION_SAMPLE_S,
    RETENTION_WINDOWS,
    RUN_TIMEOUT,
)
from bench.fleet import make_fleet, stop_and_delete, wait_until_consuming
from bench.resources import CpuMeter, find_server_pids
from bench.results import RetentionResult
from bench.scenarios import Context, StuckRunError

PROGRESS_S = 60.0
"""The paced phase prints a progress line this often (the full size runs for many minutes)."""
START_BATCH = 100
"""Starts in flight at once (the store's pool has 64 connections; RabbitMQ confirms)."""
METRICS = (
    "used_memory",
    "dataset",
    "net",
    "bytes_per_run",
    "keys",
    "runs",
    "active",
    "kept",
    "due",
)
"""What each window reports the median of (see ``Sample``). ``net`` is used_memory above
the baseline; ``bytes_per_run`` is ``net`` per run held: constant if nothing leaks, even
while the runs held move with the machine's other load."""


@dataclass(frozen=True)
class Sample:
    """One look at the scenario's Redis, at ``t`` (``time.perf_counter``)."""

    t: float
    used_memory: int
    dataset: int  # used_memory_dataset: used_memory less Redis's own overhead
    keys: int  # DBSIZE (meaningful on the scenario's own server only)
    runs: int  # runs held: the runs index, every run not removed yet
    active: int  # runs not finished
    kept: int  # finished runs waiting for their retention (the expire index)
    due: int  # of those, past their retention but not removed yet: the janitor's backlog

    def value(self, metric: str, baseline: Sample) -> float:
        if metric == "net":
            return float(self.used_memory - baseline.used_memory)
        if metric == "bytes_per_run":
            return (self.used_memory - baseline.used_memory) / max(self.runs, 1)
        return float(getattr(self, metric))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.asynccontextmanager
async def own_redis(directory: Path) -> AsyncIterator[tuple[str, int] | None]:
    """A throwaway ``redis-server`` on loopback: its URL and pid, or None without the binary.

    Same binary and defaults as the shared server (so no maxmemory and no active
    defragmentation), nothing saved to disk; stopped when the block ends.
    """
    binary = shutil.which("redis-server")
    if binary is None:
        yield None
        return
    port = free_port()
    proc = start_redis_server(binary, port, directory)
    url = f"redis://127.0.0.1:{port}/0"
    try:
        await wait_for_ping(url, proc, directory)
        yield url, proc.pid
    finally:
        stop_redis_server(proc)


def start_redis_server(binary: str, port: int, directory: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            binary,
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(directory),
            "--logfile",
            str(directory / "redis.log"),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def stop_redis_server(proc: subprocess.Popen[bytes]) -> None:
    """The benchmark's own server, by its pid: SIGTERM, then SIGKILL after 10 s."""
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def log_tail(path: Path) -> str:
    try:
        return path.read_text(errors="replace")[-1000:]
    except OSError:
        return "(no log)"


async def wait_for_ping(url: str, proc: subprocess.Popen[bytes], directory: Path) -> None:
    deadline = time.monotonic() + 10.0
    client = aioredis.Redis.from_url(url)
    try:
        while True:
            if proc.poll() is not None:
                tail = log_tail(directory / "redis.log")
                raise RuntimeError(f"redis-server exited with {proc.returncode}: {tail}")
            with contextlib.suppress(OSError, aioredis.ConnectionError):
                if await client.ping():
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis-server at {url} did not answer within 10 s")
            await asyncio.sleep(0.05)
    finally:
        await client.aclose()


async def scenario_retention(ctx: Context) -> RetentionResult:
    """Short runs with a 2 s retention, paced below capacity, removed by a reconciler process
    on a Redis of their own: Redis memory and the runs it holds must stay flat."""
    namespace = f"{ctx.names.namespace}-ret"
    directory = ctx.log_dir / "retention"
    directory.mkdir(exist_ok=True)
    async with own_redis(directory) as own:
        redis_url = own[0] if own else ctx.settings.redis_url
        where = f"own redis-server at {redis_url}" if own else f"the shared Redis at {redis_url}"
        settings = dataclasses.replace(ctx.settings, redis_url=redis_url, namespace=namespace)
        names = Names(namespace)
        fleet = make_fleet(settings, directory, loop=ctx.loop, layout=ctx.layout, reconciler=True)
        try:
            fleet.start_all()
            await wait_until_consuming(fleet, settings, names, ctx.layout)
            async with connect(settings) as backends:
                redis = backends.redis
                if redis is None:
                    raise RuntimeError("the retention scenario needs the Redis event store")
                await until(
                    lambda: _exists(redis, names.reconciler_lease()),
                    "the reconciler took its lease",
                    READY_TIMEOUT,
                )
                components: dict[str, list[int]] = {p.name: [p.pid] for p in fleet.procs}
                servers = find_server_pids()
                components["rabbitmq"] = servers["rabbitmq"]
                if own:
                    components["redis (own)"] = [own[1]]
                components["idle bench fleet"] = list(ctx.process_pids.values())
                measure = Measure(
                    lf.Client(backends.store, backends.broker),
                    backends.store,
                    redis,
                    names,
                    CpuMeter(components),
                    own=own is not None,
                )
                result = await measure.run(ctx)
        finally:
            await stop_and_delete(fleet, settings)
    warnings = [f"{name}: {line}" for name, lines in fleet.log_lines().items() for line in lines]
    return dataclasses.replace(result, redis=where, process_warnings=warnings)


async def _exists(redis: RedisClient, key: str) -> bool:
    return bool(await redis.exists(key))


async def until(done: Callable[[], Awaitable[bool]], what: str, timeout: float) -> None:
    deadline = time.perf_counter() + timeout
    while not await done():
        if time.perf_counter() > deadline:
            raise StuckRunError(f"retention scenario: {what} within {timeout:g} s")
        await asyncio.sleep(0.1)


class Measure:
    """The two phases and the sampler, on one namespace of one Redis."""

    def __init__(
        self,
        client: lf.Client,
        store: EventStore,
        redis: RedisClient,
        names: Names,
        cpu: CpuMeter,
        *,
        own: bool,
    ) -> None:
        self.client = client
        self.store = store
        self.names = names
        self.cpu = cpu
        self.own = own
        self.redis = redis
        self.samples: list[Sample] = []
        self.started = 0

    async def sample(self) -> Sample:
        now = await self.store.now_ms()
        shards = (
            self.names.runs_shards(),
            self.names.active_shards(),
            self.names.expire_shards(),
        )
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.info("memory")
            pipe.dbsize()
            for shard_keys in shards:
                for key in shard_keys:
                    pipe.zcard(key)
            for key in self.names.expire_shards():
                pipe.zcount(key, "-inf", now)
            replies: list[Any] = await pipe.execute()
        memory, keys, counts = replies[0], int(replies[1]), [int(n) for n in replies[2:]]
        n = self.names.shards
        return Sample(
            t=time.perf_counter(),
            used_memory=int(memory["used_memory"]),
            dataset=int(memory["used_memory_dataset"]),
            keys=keys,
            runs=sum(counts[:n]),
            active=sum(counts[n : 2 * n]),
            kept=sum(counts[2 * n : 3 * n]),
            due=sum(counts[3 * n :]),
        )

    async def sampler(self, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            self.samples.append(await self.sample())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), RETENTION_SAMPLE_S)

    async def start(self, count: int) -> None:
        await asyncio.gather(
            *(self.client.start(apps.short, self.started + i) for i in range(count))
        )
        self.started += count

    async def drained(self) -> None:
        """Every run finished, then every run removed by the reconciler's janitor."""
        store = self.store
        await until(lambda: _is_zero(store.count_active_runs()), "every run finished", RUN_TIMEOUT)
        await until(
            lambda: self.held_none(),
            "the reconciler removed every run",
            RUN_TIMEOUT + apps.RETENTION_SECONDS + 2 * DEFAULT_INTERVAL,
        )

    async def held_none(self) -> bool:
        return (await self.sample()).runs == 0

    async def capacity(self, runs: int) -> tuple[int, float]:
        """Runs started and finished per second, starting them as fast as they finish (at
        most ``RETENTION_CAPACITY_LIVE`` unfinished), ``runs`` of them or for at most
        ``RETENTION_CAPACITY_S``."""
        began = time.perf_counter()
        first = self.started
        target = first + runs
        while self.started < target and time.perf_counter() - began < RETENTION_CAPACITY_S:
            live = await self.store.count_active_runs()
            room = min(START_BATCH, target - self.started, RETENTION_CAPACITY_LIVE - live)
            if room <= 0:
                await asyncio.sleep(0.02)
                continue
            await self.start(room)
        await until(
            lambda: _is_zero(self.store.count_active_runs()), "every run finished", RUN_TIMEOUT
        )
        done = self.started - first
        return done, done / (time.perf_counter() - began)

    async def paced(self, runs: int, rate: float) -> tuple[float, float, float]:
        """Start ``runs`` runs at ``rate`` per second; (began, last start, worst lag in s)."""
        began = time.perf_counter()
        first = self.started
        lag = 0.0
        shown = began
        while self.started - first < runs:
            elapsed = time.perf_counter() - began
            if began + elapsed - shown >= PROGRESS_S:
                shown = began + elapsed
                self.progress(shown, self.started - first, runs)
            sent = self.started - first
            due = min(runs, int(elapsed * rate) + 1)
            if due <= sent:
                await asyncio.sleep(sent / rate - elapsed)
                continue
            lag = max(lag, elapsed - sent / rate)
            if self.samples and self.samples[-1].active > rate * RETENTION_MAX_BACKLOG_S:
                raise StuckRunError(
                    f"retention scenario: {self.samples[-1].active} runs unfinished at "
                    f"{rate:.0f} runs/s: the machine no longer keeps up with the pace"
                )
            await self.start(min(START_BATCH, due - sent))
        return began, time.perf_counter(), lag

    def progress(self, now: float, sent: int, runs: int) -> None:
        """A line per ``PROGRESS_S`` of the paced phase: its medians over that time."""
        recent = [s for s in self.samples if s.t > now - PROGRESS_S]
        if not recent:
            return
        memory = statistics.median(s.used_memory for s in recent) / 2**20
        held = statistics.median(s.runs for s in recent)
        due = statistics.median(s.due for s in recent)
        print(
            f"    {sent}/{runs} started; last {PROGRESS_S:g} s, medians: used_memory "
            f"{memory:.2f} MiB, runs held {held:.0f}, due not removed {due:.0f}",
            flush=True,
        )

    async def run(self, ctx: Context) -> RetentionResult:
        sizes = ctx.sizes
        retention = float(apps.RETENTION_SECONDS)
        stopping = asyncio.Event()
        sampling = asyncio.create_task(self.sampler(stopping))
        try:
            capacity_runs, capacity = await self.capacity(sizes.retention_capacity_runs)
            await self.drained()
            baseline = await self.sample()
            rate = capacity * RETENTION_RATE_FRACTION
            print(
                f"  capacity {capacity:.0f} runs/s ({capacity_runs} runs); pacing "
                f"{sizes.retention_runs} runs at {rate:.0f} runs/s "
                f"({RETENTION_RATE_FRACTION:.0%}): "
                f"about {sizes.retention_runs / rate / 60:.0f} min",
                flush=True,
            )
            cpu_before = self.cpu.snapshot()
            began, last_start, lag = await self.paced(sizes.retention_runs, rate)
            cpu = CpuMeter.percent(cpu_before, self.cpu.snapshot(), last_start - began)
            await until(
                lambda: _is_zero(self.store.count_active_runs()), "every run finished", RUN_TIMEOUT
            )
            wall = time.perf_counter() - began
            await self.drained()
        finally:
            stopping.set()
            (failed,) = await asyncio.gather(sampling, return_exceptions=True)
        if isinstance(failed, BaseException):
            raise RuntimeError(f"retention scenario: the sampler failed: {failed!r}") from failed
        end = await self.sample()
        return judge(
            samples=self.samples,
            baseline=baseline,
            end=end,
            began=began,
            last_start=last_start,
            retention=retention,
            runs=sizes.retention_runs,
            capacity_runs=capacity_runs,
            capacity=capacity,
            rate=rate,
            wall=wall,
            lag=lag,
            cpu=cpu,
            started=self.started,
            own=self.own,
        )


async def _is_zero(count: Awaitable[int]) -> bool:
    return await count == 0


def windows_of(samples: list[Sample], start: float, end: float) -> list[list[Sample]]:
    """Equal time windows of [start, end], each at least two reconciler intervals long."""
    span = end - start
    count = max(1, min(RETENTION_WINDOWS, int(span // (2 * DEFAULT_INTERVAL))))
    width = span / count
    cut: list[list[Sample]] = [[] for _ in range(count)]
    for sample in samples:
        if start <= sample.t <= end:
            cut[min(count - 1, int((sample.t - start) // width))].append(sample)
    return [w for w in cut if w]


def spread(values: list[float]) -> float | None:
    """(max - min) / min: how far apart the window medians are."""
    low = min(values, default=0.0)
    return None if low <= 0 else (max(values) - low) / low


def growth(values: list[float]) -> float | None:
    """(last - first) / first: the trend from the first window to the last."""
    return None if not values or values[0] <= 0 else (values[-1] - values[0]) / values[0]


def judge(
    *,
    samples: list[Sample],
    baseline: Sample,
    end: Sample,
    began: float,
    last_start: float,
    retention: float,
    runs: int,
    capacity_runs: int,
    capacity: float,
    rate: float,
    wall: float,
    lag: float,
    cpu: dict[str, float],
    started: int,
    own: bool,
) -> RetentionResult:
    warmup = retention + 2 * DEFAULT_INTERVAL
    windows = windows_of(samples, began + warmup, last_start)
    steady = [s for w in windows for s in w]
    medians = {
        metric: [statistics.median(s.value(metric, baseline) for s in w) for w in windows]
        for metric in METRICS
        if own or metric != "keys"
    }
    spreads = {metric: spread(values) for metric, values in medians.items()}
    growths = {metric: growth(values) for metric, values in medians.items()}
    flat = (
        len(windows) >= 2
        and all(spreads[m] is not None for m in ("used_memory", "runs"))
        and max(spreads["used_memory"] or 0.0, spreads["runs"] or 0.0) <= RETENTION_FLAT
    )
    paced = [s for s in samples if began <= s.t <= last_start]
    return RetentionResult(
        runs=runs,
        retention_s=retention,
        janitor_interval_s=DEFAULT_INTERVAL,
        redis="",
        capacity_runs=capacity_runs,
        capacity_runs_per_s=capacity,
        rate_fraction=RETENTION_RATE_FRACTION,
        target_runs_per_s=rate,
        runs_per_s=runs / (last_start - began),
        wall_s=wall,
        steps_per_s=None,
        producer_max_lag_s=lag,
        warmup_s=warmup,
        window_s=(last_start - began - warmup) / max(len(windows), 1),
        windows=len(windows),
        samples=len(steady),
        baseline_used_memory=baseline.used_memory,
        baseline_keys=baseline.keys if own else None,
        medians=medians,
        spread=spreads,
        growth=growths,
        raw_used_memory_min=min((s.used_memory for s in steady), default=0),
        raw_used_memory_max=max((s.used_memory for s in steady), default=0),
        max_active=max((s.active for s in paced), default=0),
        max_due=max((s.due for s in paced), default=0),
        used_memory_end=end.used_memory,
        keys_end=end.keys if own else None,
        started=started,
        left_runs=end.runs,
        flat=flat,
        cpu_percent_of_one_core=cpu,
        process_warnings=[],
        ratio_to_floor=None,
        ratio_name="spread of the window medians of used_memory, (max - min) / min",
        correct=end.runs == 0 and (not own or end.keys <= baseline.keys),
    )
