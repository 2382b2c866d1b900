"""Every Prometheus metric ledgerflow records, defined in one place.

Like ``names.py`` for keys, this module is the one list of metric names, types
and labels; the worker, the scheduler, the timer loop and the reconciler only
call ``.inc()`` / ``.observe()`` on what is defined here. It lives in ``ops``, just
above the event log's core, so that every layer can record without importing a
higher one.

The metrics go into ``REGISTRY``, a registry of ledgerflow's own rather than
prometheus_client's global default: step code and host applications register
whatever they like in the default registry, and a name clash there must not
break a worker at import time; nor should ``--metrics-port`` serve whatever
else happens to live in the process's default registry. The process, platform
and GC collectors are added here so a scrape still shows memory and CPU. One
registry per process (module state): a process is one worker, scheduler or
reconciler, and counters are per process in Prometheus anyway. Tests that
share a process read deltas (see ``sample``).

Gauges that need I/O (queue depth, active runs, pending timers) are not read at
scrape time: ``GaugeSampler`` refreshes them from a background task, each read
under a timeout, so a scrape never waits on a dead server and one failing
read leaves the others (and the scrape) intact.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

import structlog
from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
)

from ledgerflow.eventlog.events import EventType
from ledgerflow.eventlog.schedules import ScheduleStore
from ledgerflow.eventlog.slots import Slots
from ledgerflow.eventlog.store import EventLog, Maintenance, RunIndex, TimerIndex

from .observer import Observer

log = structlog.get_logger("ledgerflow.metrics")

REGISTRY = CollectorRegistry(auto_describe=True)
for _collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
    REGISTRY.register(_collector)

# Steps run from milliseconds (an API call) to many minutes (a report).
STEP_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0,
)  # fmt: skip
# Latencies of the machinery itself: normally milliseconds, seconds when backed up.
LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
)  # fmt: skip

# --- worker: one increment per recorded event, labelled by registered step name ----------

STEPS_STARTED = Counter(
    "ledgerflow_steps_started",
    "Step attempts started (step_started appended, not a duplicate).",
    ["step"],
    registry=REGISTRY,
)
STEPS_COMPLETED = Counter(
    "ledgerflow_steps_completed",
    "Steps completed (step_completed appended).",
    ["step"],
    registry=REGISTRY,
)
STEPS_FAILED = Counter(
    "ledgerflow_steps_failed",
    "Steps failed for good (step_failed appended: fatal, attempts exhausted, worker lost).",
    ["step"],
    registry=REGISTRY,
)
STEPS_RETRIED = Counter(
    "ledgerflow_steps_retried",
    "Failed attempts that will be retried (step_retrying appended).",
    ["step"],
    registry=REGISTRY,
)
STEPS_HELD_BACK = Counter(
    "ledgerflow_steps_held_back",
    "Step deliveries that did not start because of a limit: why=concurrency (parked for a "
    "slot) or why=rate (put off to the rate limit's turn).",
    ["step", "why"],
    registry=REGISTRY,
)
STEP_DURATION = Histogram(
    "ledgerflow_step_duration_seconds",
    "Wall time of one attempt of a step's body, by its outcome (completed, retrying, failed).",
    ["step", "outcome"],
    buckets=STEP_BUCKETS,
    registry=REGISTRY,
)

# --- scheduler -------------------------------------------------------------------------------

ACTIVATION_LATENCY = Histogram(
    "ledgerflow_activation_latency_seconds",
    "From the newest event an activation found (its Redis timestamp: a step outcome, a "
    "wake-up, run_created) to the scheduler having appended and published its decision.",
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
TIMER_LATENESS = Histogram(
    "ledgerflow_timer_lateness_seconds",
    "How late a timer was acted on (the Redis clock at firing minus its due time), by kind: "
    "retry (a retry dispatched), wait (a sleep completed), hb (a stale heartbeat failed). "
    "Its _count is the number of timers fired.",
    ["kind"],
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)

HISTORY_WARNINGS = Counter(
    "ledgerflow_history_warnings",
    "Runs whose log passed the history warning threshold (--history-warn), by workflow; "
    "counted once per run per scheduler process.",
    ["workflow"],
    registry=REGISTRY,
)
HISTORY_LIMIT_FAILURES = Counter(
    "ledgerflow_history_limit_failures",
    "Runs the scheduler failed because their log passed the history limit (--history-limit), "
    "by workflow.",
    ["workflow"],
    registry=REGISTRY,
)
CONTINUATIONS = Counter(
    "ledgerflow_continuations",
    "Runs that continued as new (lf.continue_as_new): successors started.",
    registry=REGISTRY,
)

# --- schedules (the scheduler's schedule loop) ------------------------------------------------

SCHEDULE_LAG = Histogram(
    "ledgerflow_schedule_lag_seconds",
    "How late a schedule's tick was acted on (the Redis clock then minus the tick), by "
    "schedule; missed ticks count by the newest of them.",
    ["schedule"],
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
SCHEDULE_TICKS = Counter(
    "ledgerflow_schedule_ticks",
    "Ticks of schedules acted on, by schedule and outcome: started (its run started), "
    "skipped_overlap (the previous tick's run still going), missed (let go after downtime "
    "by the missed-tick policy), conflict (its run id taken by another workflow's run).",
    ["schedule", "outcome"],
    registry=REGISTRY,
)

# --- reconciler ------------------------------------------------------------------------------

RECOVERIES = Counter(
    "ledgerflow_reconciler_recoveries",
    "Things the reconciler (or a redrive) put back, by reason.",
    ["reason"],
    registry=REGISTRY,
)
SWEEPS = Counter(
    "ledgerflow_reconciler_sweeps",
    "Completed reconciler sweeps.",
    registry=REGISTRY,
)
SKIPPED_RUNS = Counter(
    "ledgerflow_reconciler_skipped_runs",
    "Runs a reconciler sweep passed over because their log could not be read.",
    registry=REGISTRY,
)

# --- retention (the janitor) -----------------------------------------------------------------

RUNS_REMOVED = Counter(
    "ledgerflow_runs_removed",
    "Finished runs the janitor removed because their retention had passed.",
    registry=REGISTRY,
)
BYTES_REMOVED = Counter(
    "ledgerflow_removed_bytes",
    "Approximate Redis bytes of the runs the janitor removed (MEMORY USAGE of each run's "
    "stream and status hash just before removal; offloaded blobs not included).",
    registry=REGISTRY,
)

# --- sampled gauges (GaugeSampler) -----------------------------------------------------------

MAX_KEY_LABELS = 20
"""Concurrency keys given labels of their own: keys are users' values (tenants), unbounded."""

QUEUE_DEPTH = Gauge(
    "ledgerflow_queue_depth",
    "Ready messages in a queue (in-flight ones not counted), sampled periodically.",
    ["queue"],
    registry=REGISTRY,
)
ACTIVE_RUNS = Gauge(
    "ledgerflow_active_runs",
    "Unfinished runs in the active-runs index (all shards), sampled periodically.",
    registry=REGISTRY,
)
TIMERS_PENDING = Gauge(
    "ledgerflow_timers_pending",
    "Entries in the timer index (all shards: retries, sleeps, heartbeat checks), sampled.",
    registry=REGISTRY,
)
RUNS_PENDING_REMOVAL = Gauge(
    "ledgerflow_runs_pending_removal",
    "Finished runs past their retention, not yet removed (all shards of both retention "
    "indexes), sampled. Growing: the janitor (in the reconciler) is not keeping up or not running.",
    registry=REGISTRY,
)
SLOTS_HOLDING = Gauge(
    "ledgerflow_concurrency_slots_in_use",
    "Concurrency slots held per limit and key (lf.Concurrency), sampled. Keys are the "
    f'{MAX_KEY_LABELS} with the most waiting; key="*" sums a limit\'s other keys.',
    ["limit", "key"],
    registry=REGISTRY,
)
SLOTS_WAITING = Gauge(
    "ledgerflow_concurrency_waiting",
    "Steps parked for a concurrency slot per limit and key, sampled (keys as for "
    "ledgerflow_concurrency_slots_in_use).",
    ["limit", "key"],
    registry=REGISTRY,
)
SCHEDULES_OVERDUE = Gauge(
    "ledgerflow_schedule_overdue_seconds",
    "How long the most overdue unpaused schedule has been due and not acted on (0: none), "
    "sampled. Growing: no scheduler is running, or none can act on it.",
    registry=REGISTRY,
)
SAMPLE_ERRORS = Counter(
    "ledgerflow_gauge_read_errors",
    "Sampled gauge reads that failed or timed out (the gauge keeps its last value).",
    ["gauge"],
    registry=REGISTRY,
)
SAMPLE_AGE = Gauge(
    "ledgerflow_gauge_last_success_timestamp_seconds",
    "When each sampled gauge was last read successfully (unix time): tells stale from fresh.",
    ["gauge"],
    registry=REGISTRY,
)

DEFAULT_SAMPLE_INTERVAL = 5.0

DEFAULT_READ_TIMEOUT = 2.0

QueueDepth = Callable[[str], Awaitable[int]]


class Counted(EventLog, RunIndex, TimerIndex, Maintenance, Slots, ScheduleStore, Protocol):
    """What the sampled gauges count: active runs, pending timers, runs pending removal,
    concurrency slots, the most overdue schedule."""


def sample(name: str, labels: dict[str, str] | None = None) -> float:
    """The current value of one sample of ``REGISTRY`` (0.0 if absent): for tests and checks."""
    value = REGISTRY.get_sample_value(name, labels or {})
    return 0.0 if value is None else value


class GaugeSampler:
    """Refreshes the gauges that need I/O from a background task.

    Each read runs under ``read_timeout``; a failure is logged at warning level,
    counted in ``ledgerflow_gauge_read_errors_total`` and leaves that gauge at its
    last value (``..._last_success_timestamp_seconds`` shows how old it is), while
    the other reads go ahead. ``queues`` are full queue names; ``depth`` reads one
    queue's ready count without creating it (``Broker.queue_info``).
    """

    def __init__(
        self,
        store: Counted,
        *,
        depth: QueueDepth | None = None,
        queues: Sequence[str] = (),
        interval: float = DEFAULT_SAMPLE_INTERVAL,
        read_timeout: float = DEFAULT_READ_TIMEOUT,
        retention_ms: int | None = None,
    ) -> None:
        self.store = store
        self.retention_ms = retention_ms  # the namespace default, for runs pending removal
        self.depth = depth
        self.queues = list(dict.fromkeys(queues))
        self.interval = interval
        self.read_timeout = read_timeout
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="ledgerflow-gauges")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        while True:
            await self.sample_once()
            await asyncio.sleep(self.interval)

    async def sample_once(self) -> None:
        """Read every gauge once, concurrently; returns when all are read or timed out."""
        reads = [self._read("active_runs", self._active_runs)]
        reads.append(self._read("timers_pending", self._timers_pending))
        reads.append(self._read("runs_pending_removal", self._pending_removal))
        reads.append(self._read("concurrency", self._concurrency))
        reads.append(self._read("schedule_overdue", self._schedule_overdue))
        if self.depth is not None:
            reads += [self._read(f"queue_depth:{q}", self._queue(q)) for q in self.queues]
        await asyncio.gather(*reads)

    async def _active_runs(self) -> None:
        ACTIVE_RUNS.set(await self.store.count_active_runs())

    async def _timers_pending(self) -> None:
        TIMERS_PENDING.set(await self.store.count_timers())

    async def _pending_removal(self) -> None:
        now = await self.store.now_ms()
        RUNS_PENDING_REMOVAL.set(await self.store.count_due_removals(now, self.retention_ms))

    async def _concurrency(self) -> None:
        uses = await self.store.slot_uses()
        SLOTS_HOLDING.clear()
        SLOTS_WAITING.clear()
        shown = sorted(uses, key=lambda u: (-u.waiting, -u.holding))[:MAX_KEY_LABELS]
        rest: dict[str, list[int]] = {}
        for use in uses:
            if use in shown:
                SLOTS_HOLDING.labels(limit=use.limit, key=use.key).set(use.holding)
                SLOTS_WAITING.labels(limit=use.limit, key=use.key).set(use.waiting)
            else:
                total = rest.setdefault(use.limit, [0, 0])
                total[0] += use.holding
                total[1] += use.waiting
        for limit, (holding, waiting) in rest.items():
            SLOTS_HOLDING.labels(limit=limit, key="*").set(holding)
            SLOTS_WAITING.labels(limit=limit, key="*").set(waiting)

    async def _schedule_overdue(self) -> None:
        SCHEDULES_OVERDUE.set(await self.store.schedule_lag() / 1000)

    def _queue(self, queue: str) -> Callable[[], Awaitable[None]]:
        async def read() -> None:
            assert self.depth is not None
            QUEUE_DEPTH.labels(queue=queue).set(await self.depth(queue))

        return read

    async def _read(self, gauge: str, read: Callable[[], Awaitable[None]]) -> None:
        try:
            await asyncio.wait_for(read(), self.read_timeout)
        except Exception as exc:
            SAMPLE_ERRORS.labels(gauge=gauge).inc()
            log.warning("gauge read failed", gauge=gauge, error=f"{type(exc).__name__}: {exc}")
            return
        SAMPLE_AGE.labels(gauge=gauge).set_to_current_time()


_STEP_COUNTERS = {
    EventType.STEP_STARTED: STEPS_STARTED,
    EventType.STEP_COMPLETED: STEPS_COMPLETED,
    EventType.STEP_FAILED: STEPS_FAILED,
    EventType.STEP_RETRYING: STEPS_RETRIED,
}


def step_recorded(step: str, event: EventType, duration: float | None = None) -> None:
    """Count one appended step event; with ``duration``, also time the attempt it ended."""
    counter = _STEP_COUNTERS.get(event)
    if counter is None:
        return
    counter.labels(step=step).inc()
    if duration is not None and event is not EventType.STEP_STARTED:
        STEP_DURATION.labels(step=step, outcome=event.value.removeprefix("step_")).observe(duration)


class MetricsObserver(Observer):
    """Records the worker's, the scheduler's and the reconciler's metrics from their hooks."""

    def after_step_recorded(self, step: str, event: EventType, duration: float | None) -> None:
        step_recorded(step, event, duration)

    def after_step_held_back(self, step: str, why: str) -> None:
        STEPS_HELD_BACK.labels(step=step, why=why).inc()

    def after_replay(self, run_id: str, trigger_ms: int) -> None:
        ACTIVATION_LATENCY.observe(max(0.0, time.time() - trigger_ms / 1000))

    def after_timer_fired(self, kind: str, late_ms: int) -> None:
        TIMER_LATENESS.labels(kind=kind).observe(max(0, late_ms) / 1000)

    def after_history_warning(self, run_id: str, workflow: str, events: int) -> None:
        HISTORY_WARNINGS.labels(workflow=workflow).inc()

    def after_history_limit(self, run_id: str, workflow: str, events: int) -> None:
        HISTORY_LIMIT_FAILURES.labels(workflow=workflow).inc()

    def after_continuation_started(self, run_id: str, successor: str) -> None:
        CONTINUATIONS.inc()

    def after_schedule_ticks(self, schedule: str, outcome: str, count: int, late_ms: int) -> None:
        SCHEDULE_TICKS.labels(schedule=schedule, outcome=outcome).inc(count)
        SCHEDULE_LAG.labels(schedule=schedule).observe(max(0, late_ms) / 1000)

    def after_recovery(self, run_id: str, entity: str, reason: str) -> None:
        RECOVERIES.labels(reason=reason).inc()

    def after_run_skipped(self, run_id: str) -> None:
        SKIPPED_RUNS.inc()

    def after_sweep(self) -> None:
        SWEEPS.inc()

    def after_run_removed(self, run_id: str, size_bytes: int) -> None:
        RUNS_REMOVED.inc()
        BYTES_REMOVED.inc(size_bytes)
