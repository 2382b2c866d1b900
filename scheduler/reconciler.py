"""The reconciler: find what the queue lost by replaying logs, and re-enqueue it.

Every ``interval`` the lease holder sweeps the active-runs index (shard by
shard, in batches, never a scan of the keyspace) for unfinished runs with no
progress for ``stale_after``, folds each one's log, and puts back exactly what
is missing:

- a run that was created but never started, or started with no decision after
  it, or whose log holds outcomes the scheduler never acted on (a step result, a
  wake-up, a hook delivery): an activation;
- a step created but never started, or a retry that is due but never
  dispatched: its step message;
- a step started by a worker that is gone (its presence mark expired: the
  process died) with no outcome: a new attempt. This is what recovers steps a
  ``--with-scheduler`` process ran in-process, which no unacked message covers;
- a step started by a worker that is alive but whose presence mark, written
  after the step started, does not list its run: its outcome was recorded and
  lost (a Redis failover): a new attempt (``eventlog.presence``);
- a step started long ago (twice its time limit) with no outcome: a new attempt.
  A step with no time limit of its own whose worker is alive is left alone: it
  is a long step (its message was released early), and a second attempt would
  run beside the first;
- a wait or retry whose timer entry is missing: the timer entry.

Each run checked is pushed back in the index (``defer_check``) so the sweep
moves on through every stale run instead of re-reading the oldest few: a
thousand runs legitimately waiting on hooks for days must not hide the one run
that lost a message. A run found with nothing to do, or given the same
recovery again, is looked at again after a delay that doubles each time, up to
``max_recheck``; any append (progress) resets it, since it scores the run now.
A run with a step running on a worker is looked at every ``stale_after``
instead: the worker's death is the one thing that can go wrong without an
append, and only a look finds it.
So a recovery that cannot help (an activation for a workflow no scheduler
knows, a step no worker has) is repeated with backoff, loudly, instead of
flooding the dead-letter queue every few seconds.

It never appends step results or run outcomes itself: it only re-sends
messages and rebuilds derived entries, all of which are harmless to repeat.
Every action is preceded by a lease check, so a reconciler that lost its lease
(paused, partitioned) never acts.

With a ``Janitor``, the lease holder also removes the finished runs whose
retention has passed, after each sweep (``janitor``), checking the lease before
each removal like every other action.

``redrive`` is the operator's version of one run's repair (``ledgerflow runs
redrive``): no staleness grace, an activation whatever the log's tail, and no
lease, because an operator asked for it and everything it sends is harmless to
repeat.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter, OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog
from ledgerflow.broker import Activation, Broker
from ledgerflow.broker.messages import step_message
from ledgerflow.eventlog import codec, presence
from ledgerflow.eventlog.errors import ConfigurationError, SerializationError
from ledgerflow.eventlog.events import AWAITS_SCHEDULER, SCHEDULER_WRITES, Event, EventType
from ledgerflow.eventlog.fold import RunState, StepState, fold
from ledgerflow.eventlog.kinds import RunStatus, StepStatus, WaitStatus
from ledgerflow.eventlog.records import HookDisposed, StepCreated, StepStarted
from ledgerflow.eventlog.slots import Slots
from ledgerflow.eventlog.store import EventLog, Maintenance, Presence, RunIndex, TimerIndex
from ledgerflow.eventlog.timers import Timer, TimerKind
from ledgerflow.worker.concurrency import lease_ms, send_promoted

from ledgerflow.ops.lease import Lease
from ledgerflow.ops.observer import Observer, Observers
from ledgerflow.ops.standard import standard_observers

from .chains import CONTINUE_REASON
from .hookclash import CONFLICT_REASON
from .janitor import Janitor
from .runlimits import release_ended

log = structlog.get_logger("ledgerflow.reconciler")

DEFAULT_STALE_AFTER = 30.0
DEFAULT_INTERVAL = 5.0
DEFAULT_STEP_LIMIT = 600.0  # for steps with no timeout of their own
DEFAULT_MAX_RECHECK = 300.0
BATCH = 200
RUNS_PER_SHARD = 2_000
"""Runs one sweep checks per shard at most; the rest stay due and come first next time."""
REMEMBERED = 100_000
"""Runs whose check history is kept for the backoff; older ones start again from one."""
REPEATS_BEFORE_WARNING = 3
_REPLAY_AFTER = frozenset({CONFLICT_REASON, CONTINUE_REASON})


class LeaseLost(Exception):
    """Raised inside a sweep the moment the lease is found to be someone else's."""


@dataclass(frozen=True, slots=True)
class Recovery:
    """One thing put back: the entity (``run``, ``step s3``, ``s4``) and why."""

    entity: str
    reason: str


@dataclass
class SweepReport:
    runs_checked: int = 0
    recoveries: Counter[str] = field(default_factory=Counter)
    # Runs whose log could not be read at all (each logged): the sweep went on without them.
    runs_skipped: int = 0


class ReconcilerStore(EventLog, RunIndex, TimerIndex, Presence, Maintenance, Slots, Protocol):
    """What the reconciler uses: it scans, reads logs, re-arms timers and asks who is alive."""


class Reconciler:
    def __init__(
        self,
        store: ReconcilerStore,
        broker: Broker,
        lease: Lease | None,
        *,
        stale_after: float = DEFAULT_STALE_AFTER,
        interval: float = DEFAULT_INTERVAL,
        default_step_limit: float = DEFAULT_STEP_LIMIT,
        max_recheck: float = DEFAULT_MAX_RECHECK,
        observers: Sequence[Observer] | None = None,
        janitor: Janitor | None = None,
        presence_ttl_ms: int = presence.TTL_MS,
    ) -> None:
        self.store = store
        # How old a worker's live presence mark can be: the workers' TTL (tests shorten it).
        self.presence_ttl_ms = presence_ttl_ms
        self.janitor = janitor  # removes runs past their retention after each sweep
        self.observers = Observers(standard_observers() if observers is None else observers)
        self.broker = broker
        self.lease = lease
        self.stale_after_ms = int(stale_after * 1000)
        self.interval = interval
        self.default_step_limit_ms = int(default_step_limit * 1000)
        self.max_recheck_ms = max(int(max_recheck * 1000), self.stale_after_ms)
        self.recoveries: Counter[str] = Counter()
        self.sweeps = 0
        self.skipped = 0
        self._stopping = asyncio.Event()
        # run -> last event id an activation was sent for: a run waiting on a running
        # step keeps the same tail, and one activation for that tail is enough.
        self._activated_at: dict[str, str] = {}
        # run -> (the score this reconciler gave it, checks in a row without progress)
        self._checked: OrderedDict[str, tuple[int, int]] = OrderedDict()
        # Runs the current look found with a step running on a worker (see _defer).
        self._on_workers: set[str] = set()

    # --- the daemon ------------------------------------------------------------------

    async def run(self) -> None:
        """Hold (or wait for) the lease and sweep until stopped."""
        lease = self.lease
        if lease is None:
            raise ConfigurationError("the reconciler daemon needs a lease")
        while not self._stopping.is_set():
            try:
                if await lease.check() or await lease.acquire():
                    await self.sweep()
                    if self.janitor is not None:
                        await self.janitor.sweep(fence=self._fence)
            except LeaseLost:
                log.warning("lease lost mid-sweep; standing by", owner=lease.owner)
            except Exception as exc:
                log.warning("sweep failed; retrying", error=f"{type(exc).__name__}: {exc}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.interval)
        with contextlib.suppress(Exception):
            await lease.release()

    def stop(self) -> None:
        self._stopping.set()

    # --- one sweep -------------------------------------------------------------------

    async def sweep(self) -> SweepReport:
        report = SweepReport()
        now = await self.store.now_ms()
        cutoff = now - self.stale_after_ms
        for shard in range(self.store.names.shards):
            checked: set[str] = set()
            while len(checked) < RUNS_PER_SHARD:
                due = [
                    (run_id, score)
                    for run_id, score in await self.store.stale_runs(shard, cutoff, BATCH)
                    if run_id not in checked
                ]
                if not due:
                    break
                for run_id, score in due:
                    await self._fence()
                    checked.add(run_id)
                    report.runs_checked += 1
                    try:
                        reasons = await self.repair(run_id, now)
                    except SerializationError as exc:
                        # One unreadable log must not stop the sweep for every run after it.
                        report.runs_skipped += 1
                        self.observers.after_run_skipped(run_id)
                        log.warning("run skipped: log unreadable", run_id=run_id, error=str(exc))
                        await self._defer(run_id, score, now, ["log unreadable"])
                        continue
                    for reason in reasons:
                        report.recoveries[reason] += 1
                    await self._defer(run_id, score, now, reasons)
        # Slots of runs that ended where no scheduler released them (a client's cancel),
        # and slots freed by a lease running out (a worker died), let their waiters in.
        ended = await release_ended(self.store, self.broker, lease_ms())
        if ended:
            report.recoveries["slot of an ended run released"] += ended
        promoted = await self.store.promote_waiting(lease_ms())
        if promoted:
            let_in = len(promoted)
            await send_promoted(self.broker, promoted)
            report.recoveries["waiting step let into a freed concurrency slot"] += let_in
        self.sweeps += 1
        self.skipped += report.runs_skipped
        self.observers.after_sweep()
        self.recoveries.update(report.recoveries)
        return report

    async def _defer(self, run_id: str, seen: int, now: int, reasons: list[str]) -> None:
        """Look at this run again later: after ``stale_after``, doubling while nothing moves."""
        mine, repeats = self._checked.pop(run_id, (None, -1))
        repeats = repeats + 1 if seen == mine else 0
        if run_id in self._on_workers:
            # A step runs on a worker: if that worker dies, only the next look finds
            # it, so look at the usual pace rather than backing off.
            self._on_workers.discard(run_id)
            repeats = 0 if not reasons else repeats
        delay = min(self.stale_after_ms * 2 ** min(repeats, 32), self.max_recheck_ms)
        # Due again once it has been stale for ``stale_after`` past ``now + delay``.
        until = now + delay - self.stale_after_ms
        if reasons and repeats >= REPEATS_BEFORE_WARNING:
            log.warning(
                "recovery keeps repeating without progress; the run needs an operator",
                run_id=run_id,
                reasons=reasons,
                checks=repeats + 1,
                next_check_s=delay / 1000,
            )
        await self._fence()
        if await self.store.defer_check(run_id, seen, until):
            self._checked[run_id] = (until, repeats)
            while len(self._checked) > REMEMBERED:
                self._checked.popitem(last=False)

    async def repair(self, run_id: str, now: int) -> list[str]:
        """Re-enqueue what one run's log says is missing; returns the reasons acted on."""
        return [r.reason for r in await self._repair(run_id, now, force=False)]

    async def redrive(self, run_id: str) -> list[Recovery] | None:
        """Force one run along: what ``repair`` would re-enqueue, without waiting.

        Unlike a sweep it does not wait ``stale_after`` past a retry's due time,
        and it always sends an activation, so a scheduler replays the run now
        whatever its log's tail says. None if the run does not exist; an empty
        list for a finished run (nothing is ever sent for one).
        """
        with codec.inspecting():
            if not await self.store.read(run_id, count=1):
                return None
        return await self._repair(run_id, await self.store.now_ms(), force=True)

    async def _repair(self, run_id: str, now: int, *, force: bool) -> list[Recovery]:
        # The reconciler runs no workflow code and reads only the log's structure (step
        # arguments stay encoded blobs): classes it cannot import, or data it cannot
        # decode at all, must not stop it from putting back what the queues lost.
        with codec.inspecting():
            events = await self.store.read(run_id)
        if not events:
            return []
        state = fold(run_id, events)
        if state.finished:
            self._activated_at.pop(run_id, None)
            self._checked.pop(run_id, None)
            return []
        # Every line logged while repairing this run names it and its workflow.
        tokens = structlog.contextvars.bind_contextvars(run_id=run_id, workflow=state.workflow)
        try:
            return await self._repair_unfinished(run_id, events, state, now, force=force)
        finally:
            structlog.contextvars.reset_contextvars(**tokens)

    async def _repair_unfinished(
        self, run_id: str, events: list[Event], state: RunState, now: int, *, force: bool
    ) -> list[Recovery]:
        done: list[Recovery] = []
        if state.status == RunStatus.CREATED:
            await self._publish_activation(run_id, "run never started", done)
            return done
        grace = 0 if force else self.stale_after_ms
        timers = {t.member for t, _ in await self.store.pending_timers(run_id)}
        last_started = _last_started(events)
        running = [
            _worker_of(last_started.get(s.id))
            for s in state.steps.values()
            if s.status == StepStatus.STARTED
        ]
        alive = await self.store.presence([w for w in running if w])
        if any(running):
            self._on_workers.add(run_id)
        for step in state.steps.values():
            if step.child is not None:
                continue
            if step.status == StepStatus.CREATED:
                await self._dispatch(run_id, step, 1, "step never started", done)
            elif step.status == StepStatus.RETRYING:
                timer = Timer(TimerKind.STEP_RETRY, run_id, step.id, step.attempt + 1)
                if step.retry_due is not None and step.retry_due + grace <= now:
                    await self._dispatch(
                        run_id, step, step.attempt + 1, "retry never dispatched", done
                    )
                elif timer.member not in timers and step.retry_due is not None:
                    await self._arm(
                        timer, step.retry_due, run_id, step.id, "retry timer missing", done
                    )
            elif step.status == StepStatus.STARTED:
                started = last_started.get(step.id)
                limit = _limit_ms(started, self.default_step_limit_ms)
                worker = _worker_of(started)
                if (
                    worker
                    and worker not in alive
                    and step.started_ts is not None
                    and now - step.started_ts > grace
                ):
                    # Its worker is gone (no presence mark): nobody will ever finish it.
                    await self._dispatch(
                        run_id, step, step.attempt + 1, "step's worker is gone", done
                    )
                elif (
                    worker in alive
                    and _not_held(alive[worker], run_id)
                    and step.started_ts is not None
                    and now - step.started_ts > max(grace, self.presence_ttl_ms)
                ):
                    # Its worker lives but holds nothing of this run, and every live mark
                    # was written after the step started: the outcome was recorded and
                    # then lost (a Redis failover), so nobody will ever record it again.
                    await self._dispatch(
                        run_id, step, step.attempt + 1, "step's outcome lost", done
                    )
                elif worker in alive and limit is None:
                    # A live worker runs it, and it has no time limit: a long step, not a
                    # lost one (a worker acks a long step's message early, so nothing else
                    # covers it, and a second attempt now would run it twice at once).
                    continue
                elif step.started_ts is not None and now - step.started_ts > 2 * (
                    limit or self.default_step_limit_ms
                ):
                    await self._dispatch(
                        run_id, step, step.attempt + 1, "step started long ago, no outcome", done
                    )
        for wait in state.waits.values():
            timer = Timer(TimerKind.WAIT, run_id, wait.id)
            if wait.status == WaitStatus.CREATED and timer.member not in timers:
                await self._arm(timer, wait.due, run_id, wait.id, "wait timer missing", done)
        if _undecided(events, state) and self._activated_at.get(run_id) != events[-1].id:
            await self._publish_activation(run_id, "started, nothing decided", done)
            self._activated_at[run_id] = events[-1].id
        elif _unacted(events, state) and self._activated_at.get(run_id) != events[-1].id:
            await self._publish_activation(run_id, "outcome not acted on", done)
            self._activated_at[run_id] = events[-1].id
        elif force:
            await self._publish_activation(run_id, "redrive asked for an activation", done)
        return done

    # --- fenced actions ----------------------------------------------------------------

    async def _fence(self) -> None:
        """Without a lease (an operator's redrive) there is no one to be fenced off from."""
        if self.lease is not None and not await self.lease.check():
            raise LeaseLost

    async def _publish_activation(self, run_id: str, reason: str, done: list[Recovery]) -> None:
        await self._fence()
        await self.broker.publish_activation(Activation(run_id=run_id, reason="reconciler"))
        self._recovered(run_id, "run", reason, done)

    async def _dispatch(
        self, run_id: str, step: StepState, attempt: int, reason: str, done: list[Recovery]
    ) -> None:
        await self._fence()
        created = step.created if step.created is not None else StepCreated(name=step.name)
        message = step_message(run_id, step.id, created, attempt=attempt)
        await self.broker.publish_step(message)
        self._recovered(
            run_id, f"step {step.id}", reason, done, step=step.name, corr=step.id, attempt=attempt
        )

    async def _arm(
        self, timer: Timer, due: int, run_id: str, entity: str, reason: str, done: list[Recovery]
    ) -> None:
        await self._fence()
        await self.store.add_timer(timer, due_ms=due)
        self._recovered(run_id, entity, reason, done)

    def _recovered(
        self, run_id: str, entity: str, reason: str, done: list[Recovery], **extra: Any
    ) -> None:
        done.append(Recovery(entity, reason))
        self.observers.after_recovery(run_id, entity, reason)
        log.info("recovered", run_id=run_id, entity=entity, reason=reason, **extra)


def _not_held(listed: frozenset[str] | None, run_id: str) -> bool:
    """A presence mark that lists its runs (``eventlog.presence``) and not this one."""
    return listed is not None and run_id not in listed


def _last_started(events: list[Event]) -> dict[str, StepStarted]:
    started: dict[str, StepStarted] = {}
    for event in events:
        if isinstance(event.record, StepStarted):
            started[event.corr] = event.record
    return started


def _worker_of(started: StepStarted | None) -> str:
    return started.worker or "" if started is not None else ""


def _limit_ms(started: StepStarted | None, default_ms: int) -> int | None:
    """The step's own time limit in ms; None if it has none; the default if unknown.

    Unknown means a started event recorded before limits were (no ``worker`` field).
    """
    if started is None or started.worker is None:
        return default_ms
    limits = [v for v in (started.timeout, started.heartbeat_timeout) if v is not None and v > 0]
    return int(max(limits) * 1000) if limits else None


def _unacted(events: list[Event], state: RunState) -> bool:
    """Does the log end with outcomes after the scheduler last wrote anything?"""
    for event in reversed(events):
        if _conflict_disposal(event):
            return True  # written by a scheduler, but for the workflow to see next
        if event.type in SCHEDULER_WRITES:
            return False
        if event.type in AWAITS_SCHEDULER:
            return True
    return (
        state.status == RunStatus.STARTED
        and not state.steps
        and not state.waits
        and not state.hooks
    )


def _undecided(events: list[Event], state: RunState) -> bool:
    """Started, and nothing since: the decision that follows a start was never recorded.

    A scheduler appends run_started, then the workflow's first decision (a step, a
    wait, a hook, or the end) as a second append. Workflow code always does one of
    those, so a log that ends at run_started lost the second append: the scheduler
    died in between (its activation is redelivered), or a failover lost it after the
    activation was acked (nothing else will ever replay the run).
    """
    return (
        bool(events)
        and events[-1].type is EventType.RUN_STARTED
        and state.status == RunStatus.STARTED
        and not state.steps
        and not state.waits
        and not state.hooks
    )


def _conflict_disposal(event: Event) -> bool:
    """A disposal the run must be replayed after.

    The disposal of a hook whose token was taken (scheduler.hookclash), or of a
    run's hooks before it continues as new (scheduler.chains): a crash right
    after it leaves the continuation to be finished.
    """
    return isinstance(event.record, HookDisposed) and event.record.reason in _REPLAY_AFTER
