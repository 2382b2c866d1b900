"""The failover scenario: what a Redis master's death costs, measured (issue 14, point 4).

Redis replicates asynchronously: a master answers an append before its replica has
it, so a master killed right after answering can take acknowledged events with it
when the replica is promoted. ``LEDGERFLOW_REDIS_DURABILITY=replica`` makes an
append wait (``WAIT 1``) until a replica has it (``eventlog/durability.py``). This
measures both modes under the same faults, in the same run, side by side:

* **A Redis Cluster of its own.** Three masters and three replicas on loopback
  ports 17200-17205 (``tests/cluster/redis_cluster.py``: short node timeouts, no
  persistence, ``DEBUG`` allowed), stopped at the end however the scenario ends.
  Without ``redis-server`` (or with its ports taken) the scenario says
  "skipped" and why, rather than failing.
* **Acknowledged appends lost.** 16 appenders append to runs whose keys all live
  on one master (run_created + run_started, then step_created / step_started /
  step_completed triples, each its own append, then run_completed), through a
  ``RedisEventStore`` on the ``redis+cluster://`` URL built as every process
  builds it (``worker.backend.redis_store``), and record every event whose append
  returned. Then the fault (``FAULTS``), SIGKILL of the master: after its replica
  stalled (``DEBUG SLEEP``, so replication backs up) for a second; after it
  stalled until the master ran further ahead of it than the kernel can buffer
  (``DEEP_LAG``); or as it is.
  The appenders go on through the promotion and through the killed node's return
  as a replica; then every run's log is read back and the acknowledged events
  missing from it are counted. The store's own retries are part of what is
  measured: an append that fails during the failover is retried, and counts once
  it returns.

  Why two stalls: on loopback a stalled replica still receives, when it wakes,
  everything the kernel's socket buffers took (from about 5 MB up to the
  connection's largest window, tens of MB, as it grew with the traffic), even
  from a master killed meanwhile. A second's stall may therefore lose little or
  nothing, where a replica cut off by a partition, or a master whose host dies
  with its buffers, would lose that second. The deep stall runs the backlog past
  the most the kernel can buffer, so the loss that asynchronous replication
  allows shows; each round reports the lag at the kill and the bytes the
  promoted replica lacked.
* **What the reconciler recovers.** The losing case (``none``, the deep stall)
  under a fleet as deployed: two ``ledgerflow worker --with-scheduler`` processes
  and one ``ledgerflow reconciler`` at its defaults (``bench.fleet``), running
  runs of every shape of ``bench.apps`` (fan-out, chains, waves, durable sleeps);
  mid-run the master holding most of them loses its replica's attention and then
  its life. The fleet alone writes too little to that master to fill the socket
  buffers in seconds, so part one's appenders load it meanwhile (a namespace of
  their own). Every run must finish within ``FAILOVER_FLEET_TIMEOUT_S`` with the
  right result and a valid log (``ops.checker.check_log``); the reconciler's
  recoveries are read from its log (it logs each one with its reason, at info
  level). A run that never finishes is reported, not hidden: where its log stops
  and what its steps are doing.

The store's retry warnings in this process (expected during a failover, dozens of
them) go to a file beside the process logs, not to the report; they are counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import itertools
import json
import os
import shutil
import subprocess
import sys
import time
import traceback
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from ledgerflow.eventlog import statushash as sh
from ledgerflow.eventlog.durability import Durability
from ledgerflow.eventlog.errors import IllegalTransitionError, RunNotFoundError
from ledgerflow.eventlog.events import Event, EventType, NewEvent, id_order
from ledgerflow.eventlog.fold import fold
from ledgerflow.eventlog.kinds import RUN_TERMINAL_STATES, RunStatus, StepStatus, WaitStatus
from ledgerflow.eventlog.names import Names
from ledgerflow.eventlog.records import StepStarted
from ledgerflow.eventlog.redis_store import RedisEventStore
from ledgerflow.eventlog.retrying import is_transient, retrying
from ledgerflow.scheduler.registry import WorkflowFunction
from ledgerflow.worker.backend import connect, redis_store

import ledgerflow as lf
from bench import apps
from bench.config import (
    FAILOVER_AFTER_S,
    FAILOVER_APPENDERS,
    FAILOVER_BASE_PORT,
    FAILOVER_DRAIN_S,
    FAILOVER_FLEET_LEAD_S,
    FAILOVER_FLEET_TIMEOUT_S,
    FAILOVER_LAG_CAP_S,
    FAILOVER_LAG_FALLBACK_BYTES,
    FAILOVER_LAG_MARGIN_BYTES,
    FAILOVER_RESUME_S,
    FAILOVER_SHORT_LEAD_S,
    FAILOVER_STALL_TAIL_S,
    FAILOVER_STEPS_PER_RUN,
    FAILOVER_WARMUP_S,
    Layout,
)
from bench.fleet import make_fleet, stop_and_delete, wait_until_consuming
from bench.results import FailoverResult, FleetRecovery, LossRound, StuckRun
from bench.scenarios import Context
from ledgerflow.ops.checker import check_log
from ledgerflow.testing.fleet import Fleet
from tests.cluster.redis_cluster import (
    NODE_TIMEOUT_MS,
    ClusterUnavailable,
    RedisClusterNodes,
    keyslot,
    started,
)

E = EventType
MODES = ("none", "replica")
FLEET_LAYOUT = Layout(workers=2, schedulers=0)
"""The fleet of part two: two workers, each its own scheduler (the issue's layout)."""
APPENDER = "bench-failover-appender"
"""The worker named in the appenders' step_started events (no worker process is involved)."""
READERS = 16
"""Logs read back at once."""
RETRY_LINE = "infrastructure call failed; retrying"
NOT_REPLICATED_LINE = "append not confirmed by its copies"
EXAMPLES = 5


# --- the cluster ------------------------------------------------------------------------


def slot_ranges(cluster: RedisClusterNodes) -> dict[int, list[tuple[int, int]]]:
    """Each live master's slot ranges, as the cluster sees them now."""
    ranges: dict[int, list[tuple[int, int]]] = {}
    for node in cluster.nodes():
        if node.master and not node.failed and node.slots:
            ranges.setdefault(node.port, []).extend(node.slots)
    return ranges


def owner(spans: list[tuple[int, int, int]], key: str) -> int:
    """The port of the master serving ``key``, from (low, high, port) slot spans."""
    slot = keyslot(key)
    for low, high, port in spans:
        if low <= slot <= high:
            return port
    raise LookupError(f"no master serves slot {slot} ({key})")


@dataclass(frozen=True)
class Fault:
    """How the master dies: killed as it is, or after its replica stopped reading for a while.

    A stalled replica (``DEBUG SLEEP``) reads nothing, so the master's replication
    stream backs up; the master is killed after ``lead_s``, or as soon as it is
    ``lag_bytes`` ahead of what the replica acknowledged. The replica sleeps on past
    the kill (``FAILOVER_STALL_TAIL_S``) and is promoted once it wakes, with whatever
    of the backlog reached it.
    """

    label: str
    lead_s: float = 0.0  # 0: no stall
    lag_bytes: int | None = None

    @property
    def stall_s(self) -> float:
        return self.lead_s + FAILOVER_STALL_TAIL_S if self.lead_s else 0.0


def kernel_buffer_bytes() -> int | None:
    """The most one loopback TCP connection can hold that its receiver has not read: the
    receiver's largest window (``tcp_rmem`` max) and the sender's largest buffer
    (``tcp_wmem`` max). None where they cannot be read (not Linux)."""
    try:
        return sum(
            int(Path(f"/proc/sys/net/ipv4/{name}").read_text().split()[2])
            for name in ("tcp_rmem", "tcp_wmem")
        )
    except (OSError, ValueError, IndexError):
        return None


def deep_lag_bytes() -> int:
    """The deep stall's lag: past anything the kernel can still deliver to the replica."""
    buffered = kernel_buffer_bytes()
    return FAILOVER_LAG_FALLBACK_BYTES if buffered is None else buffered + FAILOVER_LAG_MARGIN_BYTES


DEEP_LAG = deep_lag_bytes()
FAULTS = (
    Fault(f"stall {FAILOVER_SHORT_LEAD_S:g} s", lead_s=FAILOVER_SHORT_LEAD_S),
    Fault(f"stall to {DEEP_LAG / 2**20:.0f} MiB", lead_s=FAILOVER_LAG_CAP_S, lag_bytes=DEEP_LAG),
    Fault("plain kill"),
)
DEEP = FAULTS[1]
"""The fault of part two: the one that loses acknowledged appends."""


@dataclass(frozen=True)
class Killed:
    """The moment of the kill, and how far the master's replication had run ahead."""

    at: float  # time.perf_counter()
    stalled_at: float | None
    lag_bytes: int  # master_repl_offset less the replica's acknowledged offset
    master_offset: int


async def replication(port: int) -> dict[str, Any]:
    """INFO replication of one node (a connection of its own, not the cluster client)."""
    client = aioredis.Redis(host="127.0.0.1", port=port)
    try:
        return dict(await client.info("replication"))
    finally:
        await client.aclose()


def lag_of(info: dict[str, Any]) -> int:
    """How far the master's replication stream is ahead of its furthest replica's ack."""
    acked = [
        int(v["offset"]) for k, v in info.items() if k.startswith("slave") and isinstance(v, dict)
    ]
    return int(info["master_repl_offset"]) - max(acked, default=0)


@contextlib.contextmanager
def stalled(cluster: RedisClusterNodes, replica: int, fault: Fault) -> Iterator[float | None]:
    """The replica asleep for ``fault.stall_s`` (none for a plain kill); when it started.

    The ``redis-cli DEBUG SLEEP`` process ends with the sleep; it is waited for on the
    way out, so none is left behind.
    """
    if not fault.stall_s:
        yield None
        return
    staller = cluster.stall(replica, fault.stall_s)
    try:
        yield time.perf_counter()
    finally:
        try:
            staller.wait(timeout=fault.stall_s + 10)
        except subprocess.TimeoutExpired:
            staller.kill()
            staller.wait()


async def kill_after(
    cluster: RedisClusterNodes,
    victim: int,
    fault: Fault,
    stalled_at: float | None,
    before: Callable[[], Awaitable[None]] | None = None,
) -> Killed:
    """SIGKILL the master once the fault's lead is over (or its lag reached); ``before``
    runs just before (a look at what the master holds)."""
    if stalled_at is not None:
        deadline = stalled_at + fault.lead_s
        while time.perf_counter() < deadline:
            if fault.lag_bytes and lag_of(await replication(victim)) >= fault.lag_bytes:
                break
            await asyncio.sleep(0.05)
    if before is not None:
        await before()
    info = await replication(victim)
    cluster.kill(victim)
    return Killed(time.perf_counter(), stalled_at, lag_of(info), int(info["master_repl_offset"]))


async def missing_on(replica: int, killed: Killed) -> int | None:
    """Bytes of the dead master's replication stream the promoted replica never received.

    A promoted replica's ``second_repl_offset`` is one past where its copy of the old
    master's stream ended. At least this much is gone (the master's offset was read
    just before the kill; appends may have followed).
    """
    switched = int((await replication(replica)).get("second_repl_offset", -1))
    return None if switched < 0 else max(0, killed.master_offset - (switched - 1))


def redis_version() -> str:
    done = subprocess.run(
        ["redis-server", "--version"], capture_output=True, text=True, timeout=10, check=False
    )
    for word in done.stdout.split():
        if word.startswith("v="):
            return word[2:]
    return "?"


@contextlib.contextmanager
def stderr_to(path: Path) -> Iterator[Path]:
    """This process's stderr (file descriptor 2, where structlog writes) into ``path``."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(path, "ab") as sink:
            os.dup2(sink.fileno(), 2)
        yield path
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def count_lines(path: Path, text: str) -> int:
    try:
        return sum(text in line for line in path.read_text(errors="replace").splitlines())
    except OSError:
        return 0


# --- part one: acknowledged appends lost ----------------------------------------------


def run_batches() -> list[list[NewEvent]]:
    """One appender run, as the appends a scheduler and a worker would make for it."""
    data = {"workflow": "bench_failover", "args": [], "kwargs": {}}
    batches = [
        [
            NewEvent.of(E.RUN_CREATED, data=data, workflow="bench_failover"),
            NewEvent.of(E.RUN_STARTED),
        ]
    ]
    for k in range(1, FAILOVER_STEPS_PER_RUN + 1):
        corr = f"s{k}"
        step = {"name": "bench_noop", "args": [k], "kwargs": {}}
        batches += [
            [NewEvent.of(E.STEP_CREATED, corr, step)],
            [NewEvent.of(E.STEP_STARTED, corr, {"worker": APPENDER}, attempt=1)],
            [NewEvent.of(E.STEP_COMPLETED, corr, {"result": k}, attempt=1)],
        ]
    batches.append([NewEvent.of(E.RUN_COMPLETED, data={"result": FAILOVER_STEPS_PER_RUN})])
    return batches


@dataclass
class Appenders:
    """Concurrent appenders on the runs of one master, and what each append came to."""

    store: RedisEventStore
    prefix: str
    slots: list[tuple[int, int]]
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    batches: list[list[NewEvent]] = field(default_factory=run_batches)
    acked: dict[str, list[tuple[str, str, str | None]]] = field(default_factory=dict)
    """run -> (type, corr, entry id) of every acknowledged event (no id: a duplicate)."""
    acks: list[tuple[float, float, int]] = field(default_factory=list)
    """(called, returned, events) of every acknowledged append."""
    runs: list[str] = field(default_factory=list)
    appended: int = 0
    refused: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    longest: float = 0.0
    stopped_at: float | None = None
    acked_one: asyncio.Event = field(default_factory=asyncio.Event)

    def stop(self) -> None:
        self.stopped_at = time.perf_counter()
        self.stopping.set()

    def run_ids(self, index: int) -> Iterator[str]:
        """Fresh run ids whose keys live on the chosen master's slots."""
        k = 0
        while True:
            run_id = f"{self.prefix}-{index}-{k}"
            k += 1
            slot = keyslot(self.store.names.stream(run_id))
            if any(low <= slot <= high for low, high in self.slots):
                yield run_id

    async def appender(self, index: int) -> None:
        for run_id in self.run_ids(index):
            if self.stopping.is_set():
                return
            self.runs.append(run_id)
            for batch in self.batches:
                if self.stopping.is_set():
                    return
                if not await self.append(run_id, batch):
                    break  # this run cannot go on: on to a new one

    async def append(self, run_id: str, batch: list[NewEvent]) -> bool:
        """One append, as the product makes it (the store retries a failing one for 60 s)."""
        self.appended += len(batch)
        began = time.perf_counter()
        try:
            results = await self.store.append(run_id, batch)
        except (RunNotFoundError, IllegalTransitionError) as exc:
            # An acknowledged event this one follows is gone: the loss, seen by the store.
            self.refused.append(f"{run_id}: {type(exc).__name__}: {exc}")
            return False
        except Exception as exc:
            if not is_transient(exc):
                raise
            self.failed.append(f"{run_id}: {type(exc).__name__}: {exc}")
            return False
        finally:
            self.longest = max(self.longest, time.perf_counter() - began)
        self.acks.append((began, time.perf_counter(), len(batch)))
        self.acked_one.set()
        acked = self.acked.setdefault(run_id, [])
        for event, result in zip(batch, results, strict=True):
            acked.append((event.type.value, event.corr, result.event_id))
        return True

    def acks_between(self, start: float, end: float) -> tuple[int, int]:
        """(appends, events) acknowledged from ``start`` to ``end``."""
        inside = [n for _, t, n in self.acks if start <= t < end]
        return len(inside), sum(inside)

    def first_ack_after(self, moment: float) -> float | None:
        """When the first append called after ``moment`` was acknowledged (replies to
        appends the master answered before a kill still arrive just after it)."""
        return min((t for called, t, _ in self.acks if called > moment), default=None)

    async def resumed(self, after: float, timeout: float) -> None:
        """Return once an append called after ``after`` is acknowledged, or ``timeout``
        later: an appender may be asleep in the store's backoff when the cluster is whole."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while self.first_ack_after(after) is None:
                    self.acked_one.clear()
                    await self.acked_one.wait()

    def longest_gap(self) -> float:
        """The longest time without an acknowledged append, up to the stop."""
        times = sorted(t for _, t, _ in self.acks)
        if self.stopped_at is not None:
            times.append(self.stopped_at)
        return max((b - a for a, b in itertools.pairwise(times)), default=0.0)


async def drain(appenders: Appenders, tasks: list[asyncio.Task[None]]) -> list[str]:
    """Stop the appenders and wait for their appends in flight (the store may be retrying
    them); what is still retrying after ``FAILOVER_DRAIN_S`` is cancelled and returned.
    An appender that failed (not a refused or failed append: a bug) is raised."""
    appenders.stop()
    _, pending = await asyncio.wait(tasks, timeout=FAILOVER_DRAIN_S)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    for task in tasks:
        if not task.cancelled() and task.exception() is not None:
            raise RuntimeError(f"failover: an appender failed: {task.exception()!r}")
    return [f"an append still retrying after {FAILOVER_DRAIN_S:g} s"] * len(pending)


@contextlib.asynccontextmanager
async def appending(
    cluster: RedisClusterNodes, namespace: str, mode: str, slots: list[tuple[int, int]]
) -> AsyncIterator[Appenders]:
    """``FAILOVER_APPENDERS`` appenders on runs in ``slots``, through a store as the
    processes build it; stopped and drained when the block ends."""
    store = redis_store(cluster.url(), Names(namespace), Durability.parse(mode))
    try:
        await store.ping()
        await store.adopt_layout()
        appenders = Appenders(store, "fo", slots)
        tasks = [asyncio.create_task(appenders.appender(i)) for i in range(FAILOVER_APPENDERS)]
        try:
            yield appenders
        finally:
            appenders.failed += await drain(appenders, tasks)
    finally:
        await store.close()


async def missing_events(
    store: RedisEventStore, acked: dict[str, list[tuple[str, str, str | None]]]
) -> list[str]:
    """The acknowledged events no log holds any more, as ``run type corr (id)``."""
    gate = asyncio.Semaphore(READERS)

    async def one(run_id: str, wanted: list[tuple[str, str, str | None]]) -> list[str]:
        async with gate:
            events = await store.read(run_id)
        present = {(e.type.value, e.corr) for e in events}
        return [
            f"{run_id} {kind} {corr} ({entry or 'duplicate'})".replace("  ", " ")
            for kind, corr, entry in wanted
            if (kind, corr) not in present
        ]

    found = await asyncio.gather(*(one(r, w) for r, w in acked.items()))
    return [line for lines in found for line in lines]


async def loss_round(
    cluster: RedisClusterNodes, namespace: str, mode: str, fault: Fault, client_log: Path
) -> LossRound:
    """Append to one master's runs, stall its replica (or not), kill it, count the losses.

    The namespace's keys are left on the cluster: it is thrown away at the end.
    """
    await asyncio.to_thread(cluster.wait_healthy)
    ranges = slot_ranges(cluster)
    victim = min(ranges)
    replica = cluster.replica_of(victim)
    async with appending(cluster, namespace, mode, ranges[victim]) as appenders:
        began = time.perf_counter()
        await asyncio.sleep(FAILOVER_WARMUP_S)
        rate = appenders.acks_between(began, time.perf_counter())[0] / FAILOVER_WARMUP_S
        with stalled(cluster, replica, fault) as stalled_at:
            killed = await kill_after(cluster, victim, fault, stalled_at)
            failover = await asyncio.to_thread(cluster.wait_promoted, replica)
        missing = await missing_on(replica, killed)
        await asyncio.sleep(FAILOVER_AFTER_S)
        restarted = time.perf_counter()
        await asyncio.to_thread(cluster.restart, victim)
        await asyncio.to_thread(cluster.wait_healthy)
        rejoin = time.perf_counter() - restarted
        await appenders.resumed(time.perf_counter(), FAILOVER_RESUME_S)
        await asyncio.sleep(FAILOVER_AFTER_S)
    # Read back through a store of its own (the appenders' is closed): reads never wait.
    reader = redis_store(cluster.url(), Names(namespace))
    try:
        await reader.adopt_layout()
        lost = await missing_events(reader, appenders.acked)
    finally:
        await reader.close()
    stall = killed.stalled_at
    resumed = appenders.first_ack_after(killed.at)
    in_stall = appenders.acks_between(stall, killed.at)[1] if stall is not None else 0
    return LossRound(
        durability=str(appenders.store.durability),
        fault=fault.label,
        stall_s=fault.stall_s,
        lead_s=killed.at - stall if stall is not None else 0.0,
        lag_at_kill_bytes=killed.lag_bytes,
        missing_on_promoted_bytes=missing,
        victim=victim,
        appenders=FAILOVER_APPENDERS,
        runs=len(appenders.runs),
        appended=appenders.appended,
        acknowledged=sum(len(a) for a in appenders.acked.values()),
        lost=len(lost),
        lost_examples=lost[:EXAMPLES],
        refused=len(appenders.refused),
        failed=len(appenders.failed),
        failed_examples=(appenders.refused + appenders.failed)[:EXAMPLES],
        acks_per_s_before=rate,
        acked_in_stall=in_stall,
        longest_append_s=appenders.longest,
        longest_gap_s=appenders.longest_gap(),
        resumed_after_kill_s=None if resumed is None else resumed - killed.at,
        failover_s=failover,
        rejoin_s=rejoin,
        retry_warnings=count_lines(client_log, RETRY_LINE),
        not_replicated_warnings=count_lines(client_log, NOT_REPLICATED_LINE),
    )


# --- part two: what the reconciler recovers ---------------------------------------------


@dataclass(frozen=True)
class Plan:
    shape: str
    workflow: WorkflowFunction[Any, Any]
    args: tuple[Any, ...]
    expected: Any


def fleet_plans(count: int) -> list[Plan]:
    """Runs of every shape the benchmark's app has, in turn, long enough to be in flight at
    the kill (several seconds after they start); the sleeps are due after it."""
    shapes = [
        Plan("fanout", apps.fanout, (40,), sum(range(40))),
        Plan("chain", apps.chain, (1500,), 1500),
        Plan("waves", apps.waves, (100, 5), 100 * sum(range(5))),
        Plan("sleep", apps.sleeper, (10.0,), 10.0),
    ]
    return [shapes[i % len(shapes)] for i in range(count)]


def recovered_lines(fleet: Fleet) -> list[dict[str, Any]]:
    """The reconciler's "recovered" log lines (JSON, one per recovery, with its reason)."""
    found = []
    for proc in fleet.of("reconciler"):
        for line in proc.log_lines():
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if isinstance(record, dict) and record.get("event") == "recovered":
                    found.append(record)
    return found


def warning_lines(fleet: Fleet) -> list[str]:
    """Every process's warnings and errors (the reconciler also logs at info here)."""
    lines = []
    for proc in fleet.procs:
        for line in proc.log_lines():
            try:
                level = json.loads(line).get("level", "warning")
            except (ValueError, AttributeError):
                level = "warning"
            if level not in ("debug", "info"):
                lines.append(f"{proc.name}: {line}")
    return lines


def limit_of(started: StepStarted) -> float | None:
    limits = [v for v in (started.timeout, started.heartbeat_timeout) if v]
    return max(limits) if limits else None


async def diagnose(
    store: RedisEventStore, run_id: str, events: list[Event], *, on_victim: bool, lost_tail: bool
) -> tuple[StuckRun, bool]:
    """Where an unfinished run's log stops; and whether it shows the suspected gap: a step
    started on a worker still alive, with no time limit, which the reconciler leaves be."""
    state = fold(run_id, events)
    started = {e.corr: e.record for e in events if isinstance(e.record, StepStarted)}
    alive = await store.alive([s.worker for s in started.values() if s.worker])
    gap = False
    open_steps = []
    for step in state.steps.values():
        if step.status == StepStatus.COMPLETED:
            continue
        text = f"{step.id} ({step.name}) {step.status}, attempt {step.attempt}"
        record = started.get(step.id)
        if step.status == StepStatus.STARTED and record is not None:
            limit = limit_of(record)
            living = record.worker in alive
            text += f" on {record.worker} ({'alive' if living else 'gone'}), " + (
                "no time limit" if limit is None else f"limit {limit:g} s"
            )
            gap = gap or (living and limit is None)
        open_steps.append(text)
    for wait in state.waits.values():
        if wait.status != WaitStatus.COMPLETED:
            open_steps.append(f"wait {wait.id} {wait.status}, due at {wait.due} ms")
    return (
        StuckRun(
            run_id=run_id,
            workflow=state.workflow,
            status=state.status,
            on_victim=on_victim,
            lost_tail=lost_tail,
            events=len(events),
            last_events=[f"{e.type.value} {e.corr}".strip() for e in events[-4:]],
            open_steps=open_steps,
        ),
        gap,
    )


async def wait_finished(
    store: RedisEventStore, run_ids: Sequence[str], killed: float
) -> dict[str, float]:
    """run -> when it was first seen finished; returns at the deadline whatever is left."""
    finished: dict[str, float] = {}
    deadline = killed + FAILOVER_FLEET_TIMEOUT_S
    while len(finished) < len(run_ids) and time.perf_counter() < deadline:
        left = [r for r in run_ids if r not in finished]
        states = await retrying("poll the runs' states", functools.partial(store.run_states, left))
        now = time.perf_counter()
        finished.update({r: now for r, s in states.items() if s in RUN_TERMINAL_STATES})
        await asyncio.sleep(0.5)
    return finished


async def fleet_round(
    ctx: Context, cluster: RedisClusterNodes, directory: Path, runs: int
) -> FleetRecovery:
    namespace = f"{ctx.names.namespace}-fo"
    settings = dataclasses.replace(
        ctx.settings, redis_url=cluster.url(), namespace=namespace, redis_durability="none"
    )
    fleet = make_fleet(
        settings,
        directory,
        loop=ctx.loop,
        layout=FLEET_LAYOUT,
        reconciler=True,
        reconciler_log_level="info",
    )
    try:
        await asyncio.to_thread(cluster.wait_healthy)
        fleet.start_all()
        await wait_until_consuming(fleet, settings, Names(namespace), FLEET_LAYOUT)
        async with connect(settings) as backends:
            store = backends.store
            if not isinstance(store, RedisEventStore):
                raise RuntimeError("the failover scenario needs the Redis event store")
            client = lf.Client(store, backends.broker)
            return await recover(ctx, cluster, store, client, fleet, runs)
    finally:
        await stop_and_delete(fleet, settings)


async def recover(
    ctx: Context,
    cluster: RedisClusterNodes,
    store: RedisEventStore,
    client: lf.Client,
    fleet: Fleet,
    count: int,
) -> FleetRecovery:
    """Runs in flight, a lossy failover of the master holding most of them, then wait."""
    plans = fleet_plans(count)
    first = time.perf_counter()
    handles = list(await asyncio.gather(*(client.start(p.workflow, *p.args) for p in plans)))
    ids = [h.run_id for h in handles]
    ranges = slot_ranges(cluster)
    spans = [(low, high, port) for port, pairs in ranges.items() for low, high in pairs]
    where = {r: owner(spans, store.names.stream(r)) for r in ids}
    victim = Counter(where.values()).most_common(1)[0][0]
    replica = cluster.replica_of(victim)
    on_victim = [r for r in ids if where[r] == victim]
    await asyncio.sleep(FAILOVER_FLEET_LEAD_S)
    # Each run's newest entry and entry count as the master knows them just before the
    # kill: how much of that outlives the failover is what each run lost.
    tails: dict[str, tuple[str, int]] = {}

    async def snapshot() -> None:
        async with store.client.pipeline(transaction=False) as pipe:
            for run_id in on_victim:
                pipe.hmget(store.names.status(run_id), sh.LAST, sh.COUNT)
            replies: list[Any] = await pipe.execute()
        for run_id, (last, n) in zip(on_victim, replies, strict=True):
            if last:
                tails[run_id] = (last.decode() if isinstance(last, bytes) else str(last), int(n))

    # Other traffic on that master (part one's appenders, in a namespace of their own)
    # runs the backlog past the socket buffers within seconds: the fleet's own appends
    # alone would take far longer, and a backlog the buffers hold loses nothing here.
    load_namespace = f"{store.names.namespace}-load"
    async with appending(cluster, load_namespace, "none", ranges[victim]) as load:
        with stalled(cluster, replica, DEEP) as stalled_at:
            killed = await kill_after(cluster, victim, DEEP, stalled_at, before=snapshot)
            load.stop()  # no more load; its appends in flight finish after the failover
            failover = await asyncio.to_thread(cluster.wait_promoted, replica)
    missing = await missing_on(replica, killed)
    reader = redis_store(cluster.url(), Names(load_namespace))
    try:
        await reader.adopt_layout()
        load_lost = await missing_events(reader, load.acked)
    finally:
        await reader.close()
    lost_events: dict[str, int] = {}
    for run_id, (last, count) in tails.items():
        kept = [e for e in await store.read(run_id) if id_order(e.id) <= id_order(last)]
        if len(kept) < count:
            lost_events[run_id] = count - len(kept)
    await asyncio.to_thread(cluster.restart, victim)
    await asyncio.to_thread(cluster.wait_healthy)
    finished = await wait_finished(store, ids, killed.at)

    recoveries = recovered_lines(fleet)
    reasons = Counter(str(r.get("reason")) for r in recoveries)
    problems: list[str] = []
    wrong: list[str] = []
    otherwise: list[str] = []
    stuck: list[StuckRun] = []
    gap = False
    for handle, plan in zip(handles, plans, strict=True):
        events = await store.read(handle.run_id)
        problems += [f"{handle.run_id}: {p}" for p in check_log(events, handle.run_id)]
        twice = Counter(e.corr for e in events if e.type is E.STEP_COMPLETED)
        problems += [f"{handle.run_id}: {c} completed {n} times" for c, n in twice.items() if n > 1]
        state = fold(handle.run_id, events)
        if handle.run_id not in finished and not state.finished:
            diagnosis, shows_gap = await diagnose(
                store,
                handle.run_id,
                events,
                on_victim=where[handle.run_id] == victim,
                lost_tail=handle.run_id in lost_events,
            )
            stuck.append(diagnosis)
            gap = gap or shows_gap
        elif state.status != RunStatus.COMPLETED:
            otherwise.append(f"{handle.run_id} ({plan.shape}): {state.status}")
        elif (result := await handle.result(timeout=10)) != plan.expected:
            wrong.append(f"{handle.run_id} ({plan.shape}): {result!r}, expected {plan.expected!r}")
    warnings = warning_lines(fleet)
    done = len(finished) == len(ids)
    return FleetRecovery(
        runs=len(ids),
        shapes=dict(Counter(p.shape for p in plans)),
        fault=DEEP.label,
        victim=victim,
        runs_on_victim=len(on_victim),
        runs_lost_tail=len(lost_events),
        events_lost=sum(lost_events.values()),
        kill_after_s=killed.at - first,
        lag_at_kill_bytes=killed.lag_bytes,
        missing_on_promoted_bytes=missing,
        load_acknowledged=sum(len(a) for a in load.acked.values()),
        load_lost=len(load_lost),
        failover_s=failover,
        completed=len(ids) - len(stuck) - len(otherwise),
        finished_otherwise=otherwise,
        wrong_results=wrong,
        finished_after_kill_s=max(finished.values()) - killed.at if done and finished else None,
        recoveries=dict(reasons.most_common()),
        recovered_runs=len({str(r.get("run_id")) for r in recoveries}),
        recovery_lines=[
            f"{r.get('run_id')} {r.get('entity')}: {r.get('reason')}" for r in recoveries
        ][: EXAMPLES * 4],
        log_problems=problems,
        stuck=stuck,
        gap_observed=gap,
        process_warnings=len(warnings),
        first_warnings=[w[:300] for w in warnings[:3]],
        last_finish_after_kill_s=max(finished.values()) - killed.at if finished else None,
    )


# --- the scenario -----------------------------------------------------------------------


def skipped(reason: str, began: float) -> FailoverResult:
    return FailoverResult(
        redis="none",
        skipped=reason,
        wall_s=time.perf_counter() - began,
        steps_per_s=None,
        rounds=[],
        fleet=None,
        replica_rate_ratio=None,
        ratio_to_floor=None,
        ratio_name="appends acknowledged per second before any fault, replica / none",
        correct=True,
    )


def rate_ratio(rounds: list[LossRound]) -> float | None:
    """Appends acknowledged per second before any fault, replica over none (all rounds)."""
    rates = {
        mode: [r.acks_per_s_before for r in rounds if r.durability.startswith(mode)]
        for mode in MODES
    }
    none, replica = sum(rates["none"]), sum(rates["replica"])
    return replica / none if none and rates["replica"] else None


def keep_evidence(cluster: RedisClusterNodes, directory: Path) -> None:
    """On a failure: the traceback (the report prints one line), each node's state and its
    log, beside the process logs, before the cluster and its folder go."""
    states = [
        f":{port} pid {proc.pid} "
        + ("running" if proc.poll() is None else f"exited {proc.returncode}")
        for port, proc in sorted(cluster.procs.items())
    ]
    (directory / "failover-error.txt").write_text(
        traceback.format_exc() + "\nnodes:\n" + "\n".join(states) + "\n"
    )
    for port in cluster.ports:
        log = cluster.root / str(port) / "redis.log"
        if log.exists():
            shutil.copyfile(log, directory / f"redis-{port}.log")


async def measure(ctx: Context, cluster: RedisClusterNodes, directory: Path) -> FailoverResult:
    """Both parts on a running cluster."""
    began = time.perf_counter()
    redis = (
        f"own Redis Cluster (Redis {redis_version()}, 3 masters + 3 replicas, "
        f"cluster-node-timeout {NODE_TIMEOUT_MS} ms) on 127.0.0.1:"
        f"{cluster.ports[0]}-{cluster.ports[-1]}"
    )
    print(f"  {redis}", flush=True)
    rounds: list[LossRound] = []
    for number, fault in enumerate(FAULTS):
        for mode in MODES:
            label = f"{mode}-{number}"
            with stderr_to(directory / f"client-{label}.log") as client_log:
                done = await loss_round(
                    cluster, f"{ctx.names.namespace}-fo{label}", mode, fault, client_log
                )
            rounds.append(done)
            print(
                f"    {mode}, {fault.label}: {done.acknowledged} acknowledged, {done.lost} lost",
                flush=True,
            )
    with stderr_to(directory / "client-fleet.log"):
        fleet = await fleet_round(ctx, cluster, directory, ctx.sizes.failover_runs)
    correct = (
        all(r.lost == 0 for r in rounds if r.durability.startswith("replica"))
        and not fleet.stuck
        and not fleet.finished_otherwise
        and not fleet.wrong_results
        and not fleet.log_problems
    )
    return FailoverResult(
        redis=redis,
        skipped=None,
        wall_s=time.perf_counter() - began,
        steps_per_s=None,
        rounds=rounds,
        fleet=fleet,
        replica_rate_ratio=rate_ratio(rounds),
        ratio_to_floor=None,
        ratio_name="appends acknowledged per second before any fault, replica / none",
        correct=correct,
    )


async def scenario_failover(ctx: Context) -> FailoverResult:
    """Acknowledged appends lost when a Redis master dies, durability none against replica,
    and what the reconciler recovers after such a loss, on a Redis Cluster of its own."""
    began = time.perf_counter()
    missing = [b for b in ("redis-server", "redis-cli") if shutil.which(b) is None]
    if missing:
        return skipped(f"{' and '.join(missing)} not installed", began)
    directory = ctx.log_dir / "failover"
    directory.mkdir(exist_ok=True)
    try:
        with started(base_port=FAILOVER_BASE_PORT) as cluster:
            try:
                return await measure(ctx, cluster, directory)
            except Exception:
                keep_evidence(cluster, directory)
                raise
    except ClusterUnavailable as exc:
        return skipped(str(exc), began)
