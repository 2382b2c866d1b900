"""The chaos driver: runs under load while processes, queues, connections and the broker fail.

:func:`run_chaos` starts workers, schedulers and reconcilers as real CLI
subprocesses in their own namespace, starts a seeded mix of fan-out, chain,
sleep and retry runs at a steady rate, and meanwhile injects faults at random
(from the same seed):

- ``kill_worker`` / ``kill_scheduler`` / ``kill_reconciler``: SIGKILL one
  process, restart it after a short pause;
- ``purge_queues``: purge ``<ns>.steps.default`` and ``<ns>.runs`` (lost
  messages: only the reconciler can bring those runs back);
- ``redis_kill_clients``: ``CLIENT KILL TYPE normal`` (every client connection);
- ``rabbitmq_restart``: ``rabbitmqctl stop_app`` / ``start_app``, always
  started again in a ``finally``, even on failure or Ctrl-C.

Then it waits for every run and checks it: completed, with the result the
driver computed up front, and a log that passes :func:`ops.checker.check_log`
with exactly the steps its shape asks for. Recoveries are counted from the
reconcilers' JSON log lines (event ``recovered``, field ``reason``).

*Slowest recovery* is defined from the runs' own logs (event ``ts``, the Redis
clock). Each gap between two consecutive events of a run has a *stall*: the
gap minus any part of it the run spent waiting for a durable timer it asked
for (a sleep, a retry backoff) to be due; running a step (tens of ms here)
counts. A stall is put down to the first fault that could have caused it: the
earliest one injected before the gap ended and lasting until at most a second
before the gap began. The slowest recovery is the longest stall put down to a
fault, with its kind and run. It includes the fault's own duration (a broker
down for two seconds delays everything by at least that) and, for lost
messages, the reconciler's ``stale_after``. The longest stall put down to no
fault is reported too: the baseline of a loaded but undisturbed system.

The driver never hides a failure: a run that does not finish is *lost*, a
wrong or failed result is *wrong*, a log problem is *duplicated*, and a
process that exits on its own is a *crash* (restarted so the run goes on, and
reported). It always stops every process it started and deletes its
namespace's queues and Redis keys, and keeps the process logs only when the
verdict is not clean.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import functools
import itertools
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar
from urllib.parse import urlparse

import redis.asyncio as aioredis
from ledgerflow.eventlog.errors import BrokerError, ServiceUnavailableError
from ledgerflow.eventlog.events import RUN_TERMINAL, Event, EventType
from ledgerflow.eventlog.fold import RunState, apply
from ledgerflow.eventlog.names import Names
from ledgerflow.eventlog.retrying import retrying
from ledgerflow.eventlog.settings import Settings
from ledgerflow.worker.backend import Backends, connect
from redis.exceptions import RedisError

import ledgerflow as lf
from ledgerflow.ops.checker import check_log
from ledgerflow.testing.fleet import Fleet
from ledgerflow.testing.namespace import delete_namespace
from tests.chaos import apps
from tests.processes import ROOT, cli_env
from tests.servers import Servers

APP = "tests.chaos.apps"

KILL_KINDS = ("kill_worker", "kill_scheduler", "kill_reconciler")
FAULT_KINDS = (*KILL_KINDS, "purge_queues", "redis_kill_clients", "rabbitmq_restart")
ROLE_OF = {"kill_worker": "worker", "kill_scheduler": "scheduler", "kill_reconciler": "reconciler"}

# Transient errors a producer rides out by retrying (start() is idempotent per run id);
# anything else (a bad argument, a workflow mismatch) is a bug and propagates.
TRANSIENT = (
    BrokerError,
    ServiceUnavailableError,
    RedisError,
    ConnectionError,
    OSError,
    TimeoutError,
)
STOP_TIMEOUT = 20.0
# A fault may stall a run a little after it ended: a purged step's siblings
# finish first, and only then does the run sit waiting for it.
SLACK_MS = 1000
T = TypeVar("T")


class HasUrls(Protocol):
    """Anything that says where the servers are (``tests.servers.Servers`` does)."""

    @property
    def amqp_url(self) -> str: ...

    @property
    def redis_url(self) -> str: ...


# --- the report ------------------------------------------------------------------------


@dataclass
class Fault:
    """One injected fault, timed on the Redis clock so it compares with event ``ts``."""

    kind: str
    at_ms: int
    took_ms: int
    detail: str
    at_offset: float = 0.0  # seconds since the chaos run began


@dataclass
class Recovery:
    """The longest stall put down to one fault (see the module docstring)."""

    seconds: float
    fault: str
    fault_at: float  # seconds since the chaos run began
    run_id: str


@dataclass
class ChaosReport:
    """Everything a chaos run found; ``ok`` only if nothing was lost, wrong or duplicated."""

    seed: int
    namespace: str
    runs: int = 0
    completed: int = 0
    elapsed: float = 0.0
    shapes: Counter[str] = field(default_factory=Counter)
    lost: list[str] = field(default_factory=list)
    wrong: list[str] = field(default_factory=list)
    duplicated: dict[str, list[str]] = field(default_factory=dict)
    crashes: list[str] = field(default_factory=list)
    faults: Counter[str] = field(default_factory=Counter)
    fault_log: list[Fault] = field(default_factory=list)
    recoveries: Counter[str] = field(default_factory=Counter)
    slowest_recovery: Recovery | None = None
    slowest_by_kind: dict[str, float] = field(default_factory=dict)
    longest_calm_stall: Recovery | None = None
    durations: list[float] = field(default_factory=list)
    start_retries: int = 0
    purged: int = 0
    dead_lettered: int = 0
    queues_at_end: list[str] = field(default_factory=list)
    log_dir: str | None = None

    @property
    def ok(self) -> bool:
        return not (self.lost or self.wrong or self.duplicated or self.crashes)

    def render(self, verbose: bool = False) -> str:
        """A short human report: figures first, then the evidence for anything wrong.

        ``verbose`` adds the fault timeline (seconds since the start, Redis clock).
        """
        lines = [
            f"chaos run: seed {self.seed}, namespace {self.namespace}, {self.elapsed:.1f} s",
            f"runs: {self.runs} ({_counts(self.shapes)}); completed {self.completed}, "
            f"lost {len(self.lost)}, wrong {len(self.wrong)}, "
            f"duplicated {len(self.duplicated)}",
        ]
        if self.durations:
            ds = sorted(self.durations)
            lines.append(
                f"run durations: median {statistics.median(ds):.2f} s, "
                f"p95 {ds[int(0.95 * (len(ds) - 1))]:.2f} s, max {ds[-1]:.2f} s"
            )
        lines.append(f"faults injected: {sum(self.faults.values())} ({_counts(self.faults)})")
        lines.append(
            f"  messages purged {self.purged}, producer start() retries {self.start_retries}, "
            f"dead-lettered {self.dead_lettered}"
        )
        lines.append(
            f"recoveries by reason: {sum(self.recoveries.values())} "
            f"({_counts(self.recoveries) or 'none'})"
        )
        if self.slowest_recovery is not None:
            s = self.slowest_recovery
            lines.append(
                f"slowest recovery: {s.seconds:.2f} s after {s.fault} at +{s.fault_at:.1f} s "
                f"(run {s.run_id})"
            )
            per_kind = ", ".join(f"{k} {v:.2f} s" for k, v in sorted(self.slowest_by_kind.items()))
            lines.append(f"  slowest by fault kind: {per_kind}")
        if self.longest_calm_stall is not None:
            lines.append(f"  longest stall near no fault: {self.longest_calm_stall.seconds:.2f} s")
        if verbose and self.fault_log:
            for f in self.fault_log:
                lines.append(
                    f"  +{f.at_offset:6.1f} s  {f.kind:<19} {f.took_ms / 1000:5.2f} s  {f.detail}"
                )
        if self.crashes:
            lines.append(f"processes that exited on their own: {len(self.crashes)}")
            lines += [f"  {c}" for c in self.crashes]
        for run_id in self.lost:
            lines.append(f"LOST {run_id}")
        if self.queues_at_end:
            lines.append("queues when the wait ended (name, ready, unacked, consumers):")
            lines += [f"  {q}" for q in self.queues_at_end]
        lines += [f"WRONG {w}" for w in self.wrong]
        for run_id, problems in self.duplicated.items():
            lines += [f"LOG PROBLEM {run_id}: {p}" for p in problems]
        verdict = (
            "OK: 0 lost / 0 wrong / 0 duplicated"
            if self.ok
            else f"FAILED: {len(self.lost)} lost / {len(self.wrong)} wrong / "
            f"{len(self.duplicated)} duplicated / {len(self.crashes)} crashed"
        )
        lines.append(verdict)
        if self.log_dir:
            lines.append(f"process logs kept in {self.log_dir}")
        return "\n".join(lines)


def _counts(counter: Counter[str]) -> str:
    return ", ".join(f"{k} {n}" for k, n in sorted(counter.items()))


# --- RabbitMQ restarts: always started again ---------------------------------------------


def _rabbitmqctl() -> str:
    found = shutil.which("rabbitmqctl")
    if found is None:
        raise RuntimeError("rabbitmqctl is not installed here; run without rabbitmq_restart")
    return found


def _wait_port(url: str, default: int, timeout: float = 60.0) -> None:
    parsed = urlparse(url)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with (
            contextlib.suppress(OSError),
            socket.create_connection((parsed.hostname or "127.0.0.1", parsed.port or default), 1),
        ):
            return
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not accept connections within {timeout} s")


def ensure_rabbitmq_started(amqp_url: str) -> None:
    """``start_app`` then ``await_startup``, blocking: safe to call from any ``finally``.

    Blocking on purpose: an ``await`` in a ``finally`` can be cancelled a second
    time (a second Ctrl-C) and leave the broker stopped for everyone.
    """
    ctl = _rabbitmqctl()
    last: Exception | None = None
    for _ in range(5):
        try:
            subprocess.run([ctl, "start_app"], check=True, capture_output=True, timeout=120)
            subprocess.run([ctl, "await_startup"], check=True, capture_output=True, timeout=120)
            _wait_port(amqp_url, 5672)
            return
        except (subprocess.SubprocessError, RuntimeError) as exc:
            last = exc
            time.sleep(1.0)
    raise RuntimeError(f"RabbitMQ's app did not start again: {last}")


async def _ctl(proc_slot: list[subprocess.Popen[bytes]], *args: str) -> None:
    """Run rabbitmqctl without blocking the loop; the slot lets a ``finally`` wait for it.

    A plain Popen polled (not an asyncio subprocess) on purpose: the ``finally``
    of :func:`restart_rabbitmq` must be able to wait for it without awaiting.
    """
    proc = subprocess.Popen(  # noqa: ASYNC220
        [_rabbitmqctl(), *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    proc_slot[:] = [proc]
    while proc.poll() is None:  # noqa: ASYNC110
        await asyncio.sleep(0.1)
    if proc.returncode != 0:
        raise RuntimeError(f"rabbitmqctl {' '.join(args)} exited {proc.returncode}")


# RabbitMQ URLs whose app this process stopped and has not seen start again. The
# ``finally`` below restarts it; the atexit hook is the last resort for a loop
# that was torn down without running it (Ctrl-C in pytest, say).
_STOPPED_BY_US: set[str] = set()


@atexit.register
def _restart_what_we_stopped() -> None:
    for url in list(_STOPPED_BY_US):
        ensure_rabbitmq_started(url)
        _STOPPED_BY_US.discard(url)


async def restart_rabbitmq(amqp_url: str, pause: float) -> None:
    """stop_app, wait ``pause``, start_app; the app is started again whatever happens."""
    slot: list[subprocess.Popen[bytes]] = []
    _STOPPED_BY_US.add(amqp_url)
    try:
        await _ctl(slot, "stop_app")
        await asyncio.sleep(pause)
        await _ctl(slot, "start_app")
        await _ctl(slot, "await_startup")
        await asyncio.to_thread(_wait_port, amqp_url, 5672)
        _STOPPED_BY_US.discard(amqp_url)
    finally:
        if amqp_url in _STOPPED_BY_US:
            # Let a stop_app still in flight finish first, or it would undo the start.
            for proc in slot:
                with contextlib.suppress(subprocess.SubprocessError):
                    proc.wait(timeout=120)
            ensure_rabbitmq_started(amqp_url)
            _STOPPED_BY_US.discard(amqp_url)


# --- the processes -------------------------------------------------------------------------


def make_fleet(
    servers: Servers,
    namespace: str,
    log_dir: Path,
    *,
    workers: int,
    schedulers: int,
    reconcilers: int,
    concurrency: int,
    stale_after: float,
    interval: float,
    lease_ttl: float,
    log_level: str = "warning",
) -> Fleet:
    """Workers, schedulers and reconcilers as real ``python -m ledgerflow`` processes."""
    fleet = Fleet(cli_env(servers, namespace), log_dir, cwd=ROOT, stop_timeout=STOP_TIMEOUT)
    reconciler = [
        "reconciler",
        "--stale-after",
        str(stale_after),
        "--interval",
        str(interval),
        "--lease-ttl",
        str(lease_ttl),
    ]
    worker = ["worker", APP, "--concurrency", str(concurrency), "--grace", "5"]
    for role, count, command in (
        ("worker", workers, worker),
        ("scheduler", schedulers, ["scheduler", APP]),
        ("reconciler", reconcilers, reconciler),
    ):
        # Reconcilers log each recovery at info; the others only what goes wrong.
        level = "info" if role == "reconciler" else log_level
        for _ in range(count):
            fleet.add(role, command, env={"LEDGERFLOW_LOG_LEVEL": level})
    return fleet


def stop_problems(fleet: Fleet) -> list[str]:
    """Stop every process; what did not stop cleanly on SIGTERM, with its log's tail."""
    problems = []
    for stopped in fleet.stop_all():
        if stopped.killed:
            problems.append(f"{stopped.name} did not stop within {STOP_TIMEOUT} s of SIGTERM")
        elif not stopped.clean:
            tail = next(p.tail() for p in fleet.procs if p.name == stopped.name)
            problems.append(f"{stopped.name} exited {stopped.returncode} on SIGTERM: {tail}")
    return problems


# --- the run -------------------------------------------------------------------------------


@dataclass
class Started:
    run_id: str
    plan: apps.Plan


def make_plans(rng: random.Random, runs: int) -> list[apps.Plan]:
    """An even, shuffled mix of the four shapes with random sizes."""
    shapes = [apps.SHAPES[i % len(apps.SHAPES)] for i in range(runs)]
    rng.shuffle(shapes)
    plans = []
    for shape in shapes:
        base = rng.randint(0, 1000)
        args: tuple[Any, ...]
        if shape in ("fanout", "chain"):
            args = (rng.randint(6, 16) if shape == "fanout" else rng.randint(3, 10), base)
        elif shape == "sleep":
            args = (rng.choice([0.5, 1.0, 1.5, 2.0]), base)
        else:
            args = (base,)
        plans.append(apps.plan(shape, args))
    return plans


def expected_steps(plan: apps.Plan) -> int:
    """How many step_created a run of this plan records (no more, no fewer)."""
    if plan.shape == "fanout":
        return int(plan.args[0]) + 1
    if plan.shape == "chain":
        return int(plan.args[0])
    return 2


def make_schedule(
    rng: random.Random, duration: float, every: float, rabbit_restarts: int
) -> list[tuple[float, str]]:
    """When to inject what: every kind at least once, the broker restarts as asked.

    Faults are spread over the middle of the run (10 %..85 % of ``duration``),
    one per slot with jitter, so runs are in flight for each of them.
    """
    others = [k for k in FAULT_KINDS if k != "rabbitmq_restart"]
    kinds = others + ["rabbitmq_restart"] * rabbit_restarts
    total = max(len(kinds), int(duration / every))
    kinds += [rng.choice(others) for _ in range(total - len(kinds))]
    rng.shuffle(kinds)
    start, end = 0.1 * duration, 0.85 * duration
    slot = (end - start) / len(kinds)
    return [(start + (i + rng.uniform(0.1, 0.9)) * slot, k) for i, k in enumerate(kinds)]


class Chaos:
    """One chaos run's moving parts; :func:`run_chaos` is the way in."""

    def __init__(
        self,
        servers: Servers,
        namespace: str,
        backends: Backends,
        redis: aioredis.Redis,
        fleet: Fleet,
        rng: random.Random,
        report: ChaosReport,
    ) -> None:
        self.servers = servers
        self.names = Names(namespace)
        self.backends = backends
        self.client = lf.Client(backends.store, backends.broker)
        self.redis = redis
        self.fleet = fleet
        self.rng = rng
        self.report = report
        self.offset_ms = 0
        self.t0_ms = 0
        self.fanout_started = asyncio.Event()

    async def clock(self) -> None:
        """Line the local clock up with Redis's, which stamps every event."""
        before = time.time()
        redis_ms = await self.backends.store.now_ms()
        self.offset_ms = int(redis_ms - (before + time.time()) * 500)
        self.t0_ms = self.now_ms()

    def now_ms(self) -> int:
        return int(time.time() * 1000) + self.offset_ms

    # --- load ----------------------------------------------------------------------

    async def start_one(self, run_id: str, plan: apps.Plan) -> None:
        """start() until it succeeds: it is idempotent per run id, as a producer relies on."""
        while True:
            try:
                await self.client.start(plan.workflow, *plan.args, run_id=run_id)
                if plan.shape == "fanout":
                    self.fanout_started.set()
                return
            except TRANSIENT:
                self.report.start_retries += 1
                await asyncio.sleep(0.5)

    async def load(self, plans: Sequence[apps.Plan], window: float) -> list[Started]:
        """Start the runs at a steady rate over ``window`` seconds; return once all started."""
        started: list[Started] = []
        tasks = []
        t0 = time.monotonic()
        for i, plan in enumerate(plans):
            await asyncio.sleep(max(0.0, t0 + i * window / len(plans) - time.monotonic()))
            item = Started(f"{plan.shape}-{i:04d}", plan)
            started.append(item)
            tasks.append(asyncio.create_task(self.start_one(item.run_id, plan)))
        await asyncio.gather(*tasks)
        return started

    # --- faults --------------------------------------------------------------------

    async def inject(self, schedule: list[tuple[float, str]], rabbitmq: bool) -> None:
        t0 = time.monotonic()
        for at, kind in schedule:
            await asyncio.sleep(max(0.0, t0 + at - time.monotonic()))
            self.report.crashes += self.fleet.reap()
            if kind == "rabbitmq_restart" and not rabbitmq:
                continue
            if kind == "purge_queues":
                await self.backlog()
            began = self.now_ms()
            detail = await self.fault(kind)
            self.report.faults[kind] += 1
            took = self.now_ms() - began
            offset = (began - self.t0_ms) / 1000
            self.report.fault_log.append(Fault(kind, began, took, detail, offset))

    async def fault(self, kind: str) -> str:
        if kind in ROLE_OF:
            proc = self.rng.choice(self.fleet.of(ROLE_OF[kind]))
            return await self.fleet.kill_and_restart(proc, self.rng.uniform(0.3, 1.5))
        if kind == "purge_queues":
            purged = 0
            for queue in (self.names.step_queue(), self.names.runs_queue):
                purged += await _patiently(functools.partial(self.backends.broker.purge, queue))
            self.report.purged += purged
            return f"{purged} messages purged"
        if kind == "redis_kill_clients":
            killed = await self.redis.client_kill_filter(_type="normal", skipme=True)
            return f"{killed} connections killed"
        if kind == "rabbitmq_restart":
            pause = self.rng.uniform(1.0, 2.5)
            await restart_rabbitmq(self.servers.amqp_url, pause)
            return f"app down for {pause:.1f} s plus stop/start"
        raise ValueError(f"unknown fault kind {kind!r}")

    async def backlog(self, wait: float = 10.0, poll: float = 2.0) -> None:
        """Wait until a queue holds ready messages, so that a purge loses something.

        Workers prefetch as many messages as they have slots and a purge only
        removes what is not delivered yet: purging an idle queue tests nothing.
        At this load a backlog lasts a fraction of a second, right after a
        fan-out is started, so wait for the next fan-out (up to ``wait``) and
        then watch the queues closely (up to ``poll``).
        """
        self.fanout_started.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.fanout_started.wait(), wait)
        deadline = time.monotonic() + poll
        queues = (self.names.step_queue(), self.names.runs_queue)
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                for queue in queues:
                    if await self.backends.broker.queue_depth(queue) > 0:
                        return
            await asyncio.sleep(0.005)

    async def watch(self) -> None:
        """Notice processes that die by themselves while nothing else is happening."""
        while True:
            await asyncio.sleep(0.5)
            self.report.crashes += self.fleet.reap()

    # --- verdict -------------------------------------------------------------------

    async def wait_all(self, started: Sequence[Started], timeout: float) -> dict[str, Any]:
        """Each run's outcome: ('completed', result), ('failed', error) or ('lost', None)."""
        deadline = time.monotonic() + timeout
        outcomes: dict[str, Any] = {}
        for item in started:
            while True:
                remaining = max(0.1, deadline - time.monotonic())
                try:
                    outcomes[item.run_id] = (
                        "completed",
                        await self.client.result(item.run_id, remaining),
                    )
                    break
                except lf.ResultTimeoutError:
                    outcomes[item.run_id] = ("lost", None)
                    break
                except (lf.WorkflowFailedError, lf.RunCancelled) as exc:
                    outcomes[item.run_id] = ("failed", f"{type(exc).__name__}: {exc}")
                    break
                except TRANSIENT:
                    if time.monotonic() > deadline:
                        outcomes[item.run_id] = ("lost", None)
                        break
                    await asyncio.sleep(0.2)
        return outcomes

    async def verdict(self, started: Sequence[Started], outcomes: dict[str, Any]) -> None:
        report = self.report
        logs: dict[str, list[Event]] = {}
        for item in started:
            events = await retrying(
                "read a log", functools.partial(self.client.events, item.run_id)
            )
            logs[item.run_id] = events
            status, value = outcomes[item.run_id]
            if status == "lost":
                last = events[-1] if events else None
                where = f"last event {last.type.value} {last.corr}" if last else "no events"
                report.lost.append(f"{item.run_id} ({where}, {len(events)} events)")
            elif status == "failed":
                report.wrong.append(f"{item.run_id}: expected {item.plan.expected}, {value}")
            else:
                report.completed += 1
                if value != item.plan.expected:
                    report.wrong.append(
                        f"{item.run_id}: expected {item.plan.expected}, got {value!r}"
                    )
            problems = check_log(events, item.run_id)
            completed = Counter(e.corr for e in events if e.type is EventType.STEP_COMPLETED)
            twice = sorted(c for c, n in completed.items() if n > 1)
            if twice and not problems:
                problems.append(f"steps completed twice: {', '.join(twice)}")
            created = sum(e.type is EventType.STEP_CREATED for e in events)
            if status == "completed" and created != expected_steps(item.plan):
                problems.append(
                    f"{created} steps created, the {item.plan.shape} shape asks for "
                    f"{expected_steps(item.plan)}"
                )
            if problems:
                report.duplicated[item.run_id] = problems
            ends = [e.ts for e in events if e.type in RUN_TERMINAL]
            if events and ends:
                report.durations.append((ends[0] - events[0].ts) / 1000)
        self.recovery_times(logs)
        self.keep_evidence(logs)
        with contextlib.suppress(*TRANSIENT):
            report.dead_lettered = await self.backends.broker.queue_depth(self.names.dead_queue)

    def keep_evidence(self, logs: dict[str, list[Event]]) -> None:
        """Write the log of every lost, wrong or duplicated run next to the process logs.

        The namespace's Redis keys are deleted at the end, so without this the
        evidence for a product bug would go with them.
        """
        if self.report.log_dir is None:
            return
        bad = set(self.report.duplicated)
        bad |= {entry.split(" ", 1)[0].rstrip(":") for entry in self.report.lost}
        bad |= {entry.split(":", 1)[0] for entry in self.report.wrong}
        for run_id in sorted(bad & set(logs)):
            with open(Path(self.report.log_dir) / f"run-{run_id}.jsonl", "w") as out:
                for e in logs[run_id]:
                    row = {"id": e.id, "type": e.type.value, "corr": e.corr, "ts": e.ts}
                    out.write(json.dumps({**row, "data": e.data}, default=repr) + "\n")

    def recovery_times(self, logs: dict[str, list[Event]]) -> None:
        """The slowest recovery, as the module docstring defines it."""
        faults = sorted(self.report.fault_log, key=lambda f: f.at_ms)
        slowest: dict[str, Recovery] = {}
        calm = Recovery(0.0, "no fault", 0.0, "")
        for run_id, events in logs.items():
            for begin_ms, end_ms, stall_ms in stalls(events):
                cause = next(
                    (
                        f
                        for f in faults
                        if f.at_ms <= end_ms and f.at_ms + f.took_ms + SLACK_MS >= begin_ms
                    ),
                    None,
                )
                if cause is None:
                    if stall_ms / 1000 > calm.seconds:
                        calm = Recovery(stall_ms / 1000, "no fault", 0.0, run_id)
                    continue
                best = slowest.get(cause.kind)
                if best is None or stall_ms / 1000 > best.seconds:
                    slowest[cause.kind] = Recovery(
                        stall_ms / 1000, cause.kind, cause.at_offset, run_id
                    )
        self.report.slowest_by_kind = {k: r.seconds for k, r in slowest.items()}
        self.report.longest_calm_stall = calm
        if slowest:
            self.report.slowest_recovery = max(slowest.values(), key=lambda r: r.seconds)


async def _patiently(call: Callable[[], Awaitable[T]], for_s: float = 90.0) -> T:
    """Retry an idempotent admin call (a purge) through a broker restart.

    Broader than :func:`eventlog.retrying.retrying`: right after a restart the
    driver's robust connection is still reopening and aio-pika raises a bare
    RuntimeError ("Connection was not opened") for a new channel.
    """
    deadline = time.monotonic() + for_s
    while True:
        try:
            return await call()
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)


def stalls(events: Sequence[Event]) -> list[tuple[int, int, int]]:
    """(begin, end, stall) in ms of every gap between two events of a run.

    Between two consecutive events a run either runs steps (tens of ms here),
    or waits on a durable timer it asked for (a sleep, a retry backoff: the
    time until it is due is not counted), or waits on the system: a message
    that is late, lost and re-sent, a process that is restarting. What is left
    is the gap's stall; a fault-free system keeps it to scheduling latency.
    """
    state = RunState(run_id="")
    found = []
    for before, after in itertools.pairwise(events):
        apply(state, before)
        if state.finished:
            break
        busy = any(s.status in ("created", "started") for s in state.steps.values())
        dues: list[int | None] = [w.due for w in state.waits.values() if w.status == "created"]
        dues += [s.retry_due for s in state.steps.values() if s.status == "retrying"]
        due = min((d for d in dues if d is not None), default=None)
        since = before.ts if busy or due is None else max(before.ts, due)
        found.append((before.ts, after.ts, max(0, after.ts - since)))
    return found


def queue_snapshot(namespace: str) -> list[str]:
    """The namespace's queues as RabbitMQ sees them: evidence when a run is stuck."""
    ctl = shutil.which("rabbitmqctl")
    if ctl is None:
        return []
    try:
        listed = subprocess.run(
            [
                ctl,
                "list_queues",
                "-q",
                "name",
                "messages_ready",
                "messages_unacknowledged",
                "consumers",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
    except subprocess.SubprocessError as exc:
        return [f"rabbitmqctl list_queues failed: {exc}"]
    prefix = f"{namespace}."
    return [" ".join(line.split()) for line in listed.splitlines() if line.startswith(prefix)]


def recoveries_from_logs(paths: Sequence[Path]) -> Counter[str]:
    """Count the reconcilers' ``recovered`` JSON lines by reason."""
    reasons: Counter[str] = Counter()
    for path in paths:
        with contextlib.suppress(OSError), open(path, errors="replace") as lines:
            for line in lines:
                if not line.startswith("{"):
                    continue
                with contextlib.suppress(ValueError):
                    entry = json.loads(line)
                    if isinstance(entry, dict) and entry.get("event") == "recovered":
                        reasons[str(entry.get("reason", "?"))] += 1
    return reasons


async def _cleanup(servers: Servers, names: Names) -> None:
    """Delete this namespace's queues, exchanges and Redis keys; never anyone else's.

    Best effort (the verdict is already made); a server it could not reach is said.
    """
    deleted = await delete_namespace(
        servers.amqp_url, servers.redis_url, names.namespace, best_effort=True
    )
    for error in deleted.errors:
        print(f"chaos: cleanup of {names.namespace}: {error}", file=sys.stderr)


@contextlib.contextmanager
def _log_dir(namespace: str, report: ChaosReport) -> Iterator[Path]:
    """A directory for the process logs, kept (and named in the report) unless all was well."""
    path = Path(tempfile.mkdtemp(prefix=f"lf-chaos-{namespace}-"))
    report.log_dir = str(path)
    try:
        yield path
    except BaseException:
        print(f"chaos: process logs kept in {path}", file=sys.stderr)
        raise
    if report.ok:
        shutil.rmtree(path, ignore_errors=True)
        report.log_dir = None


async def run_chaos(
    servers_or_urls: HasUrls | tuple[str, str],
    namespace: str,
    *,
    runs: int = 200,
    duration: float = 120.0,
    seed: int = 0,
    workers: int = 2,
    schedulers: int = 2,
    reconcilers: int = 2,
    concurrency: int = 3,
    fault_every: float = 3.0,
    rabbit_restarts: int = 2,
    stale_after: float = 2.0,
    interval: float = 0.5,
    lease_ttl: float = 2.0,
    result_timeout: float = 180.0,
    log_level: str = "warning",
) -> ChaosReport:
    """One chaos run: ``runs`` runs started over ~80 % of ``duration`` while faults fly.

    Faults come every ``fault_every`` seconds on average, every kind at least
    once and ``rabbit_restarts`` broker restarts (0: none, and rabbitmqctl is
    not needed). After ``duration`` the faults stop and every run gets up to
    ``result_timeout`` more seconds to finish before it counts as lost.
    Workers and schedulers log at ``log_level`` (reconcilers always at info:
    their ``recovered`` lines are counted).
    """
    if isinstance(servers_or_urls, tuple):
        servers = Servers(*servers_or_urls)
    else:
        servers = Servers(servers_or_urls.amqp_url, servers_or_urls.redis_url)
    rng = random.Random(seed)
    report = ChaosReport(seed=seed, namespace=namespace)
    names = Names(namespace)
    plans = make_plans(rng, runs)
    schedule = make_schedule(rng, duration, fault_every, rabbit_restarts)
    began = time.monotonic()
    redis: aioredis.Redis = aioredis.Redis.from_url(servers.redis_url)
    try:
        with _log_dir(namespace, report) as log_dir:
            fleet = make_fleet(
                servers,
                namespace,
                log_dir,
                workers=workers,
                schedulers=schedulers,
                reconcilers=reconcilers,
                concurrency=concurrency,
                stale_after=stale_after,
                interval=interval,
                lease_ttl=lease_ttl,
                log_level=log_level,
            )
            settings = Settings(servers.amqp_url, servers.redis_url, namespace)
            try:
                async with connect(settings) as backends:
                    chaos = Chaos(servers, namespace, backends, redis, fleet, rng, report)
                    await chaos.clock()
                    fleet.start_all()
                    watcher = asyncio.create_task(chaos.watch())
                    load = asyncio.create_task(chaos.load(plans, 0.8 * duration))
                    try:
                        await chaos.inject(schedule, rabbitmq=rabbit_restarts > 0)
                        started = await load
                        report.runs = len(started)
                        report.shapes = Counter(s.plan.shape for s in started)
                        outcomes = await chaos.wait_all(started, result_timeout)
                        if any(status == "lost" for status, _ in outcomes.values()):
                            report.queues_at_end = await asyncio.to_thread(
                                queue_snapshot, namespace
                            )
                        report.crashes += fleet.reap()
                    finally:
                        # Not `suppress(CancelledError)` around an await: that would
                        # also swallow this task's own cancellation (Ctrl-C).
                        for task in (watcher, load):
                            task.cancel()
                        await asyncio.wait([watcher, load])
                    await chaos.verdict(started, outcomes)
            finally:
                report.crashes += stop_problems(fleet)
                report.recoveries = recoveries_from_logs(
                    [p.log_path for p in fleet.of("reconciler")]
                )
                report.elapsed = time.monotonic() - began
    finally:
        await _cleanup(servers, names)
        await redis.aclose()
    return report


def default_namespace() -> str:
    return f"chaos-{os.getpid()}-{random.randrange(16**6):06x}"


__all__ = [
    "FAULT_KINDS",
    "ChaosReport",
    "default_namespace",
    "ensure_rabbitmq_started",
    "run_chaos",
]
