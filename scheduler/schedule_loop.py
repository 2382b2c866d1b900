"""The schedule loop: fire each tick of every schedule exactly once, from any scheduler.

Every scheduler runs one. A tick is fired in three steps, each safe to repeat:

1. claim: the due schedule's score in the due index moves to the end of a lease
   (``LEASE_MS``), atomically, so no other scheduler takes it meanwhile, and it
   comes due again by itself if this one dies;
2. start the tick's run, under the id ``sched:<name>:<tick>`` (``run_id_for``),
   recording the schedule and the tick in its run_created; a second start of that
   id records nothing (the append is idempotent), so a tick never has two runs;
3. advance the schedule past the tick with a compare-and-set on the tick it
   claimed (``advance_schedule``): only one claimer's advance lands.

A scheduler killed between 2 and 3 leaves the lease to run out: the next claimer
finds the tick's run already there, counts it as started, and advances. One
paused, deleted or redefined while claimed is left as the pause, deletion or
new definition says (the compare-and-set refuses a stale advance).

Policies (``eventlog/schedules.py`` defines them, ``recurrence.plan`` applies
them): after downtime, the due ticks a schedule will not fire are counted as
missed, and the ones it will are committed first (``plan``: a later claimer fires
the same ones, never a second batch); a tick whose previous run is still going is
recorded as skipped under ``overlap=skip``. A run that continued as new is
followed to its chain's end for that check.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Protocol

import structlog
from ledgerflow.broker import Activation, Broker
from ledgerflow.eventlog import statushash as sh
from ledgerflow.eventlog.errors import InvalidArgumentError, WorkflowMismatchError
from ledgerflow.eventlog.events import run_created
from ledgerflow.eventlog.kinds import RUN_TERMINAL_STATES, RunStatus
from ledgerflow.eventlog.records import RunCompleted, RunCreated, ScheduleRef
from ledgerflow.eventlog.retrying import retrying
from ledgerflow.eventlog.schedules import (
    Advance,
    Overlap,
    Schedule,
    ScheduleStore,
    TickOutcome,
    run_id_for,
)
from ledgerflow.eventlog.store import EventLog, RunIndex

from ledgerflow.ops.observer import Observer, Observers
from ledgerflow.ops.standard import standard_observers

from .background import BackgroundLoop
from .client import publish_recorded
from .recurrence import Plan, Recurrence, plan
from .registry import WorkflowRegistry, workflows
from .schedules import ScheduleRegistry, sync_declared

log = structlog.get_logger("ledgerflow.schedules")

LEASE_MS = 10_000
"""How long a claim holds a schedule: far longer than acting on a tick takes (ms). A
claimer slower than that (Redis or RabbitMQ away) may see another act on the same tick,
which is safe: the run id and the compare-and-set make the second one a no-op."""
CLAIM_LIMIT = 50
MAX_IDLE = 1.0
"""The longest the loop sleeps: a schedule added meanwhile is seen within this."""
MIN_IDLE = 0.005
PUBLISH_DEADLINE = 10.0
"""How long a tick's activation is retried before it is left to the reconciler."""
CHAIN_HOPS = 100


class ScheduleLoopStore(EventLog, RunIndex, ScheduleStore, Protocol):
    """What the loop uses: schedules, and the logs of the runs their ticks start."""


class ScheduleLoop(BackgroundLoop):
    task_name = "ledgerflow-schedules"

    def __init__(
        self,
        store: ScheduleLoopStore,
        broker: Broker,
        *,
        registry: WorkflowRegistry = workflows,
        declared: ScheduleRegistry | None = None,
        observers: Observer | None = None,
        lease_ms: int = LEASE_MS,
        max_idle: float = MAX_IDLE,
    ) -> None:
        """``declared``: the code's schedules, written into Redis by ``sync`` (None: no sync,
        as for schedulers built by hand in tests, whose process may hold other apps' code)."""
        self.store = store
        self.broker = broker
        self.registry = registry
        self.declared = declared
        self.observers = Observers(standard_observers()) if observers is None else observers
        self.lease_ms = lease_ms
        self.max_idle = max_idle
        super().__init__()

    async def sync(self) -> None:
        """Write the code's schedules into the store (see ``scheduler/schedules.py``)."""
        if self.declared is not None:
            declared = self.declared
            await retrying("sync schedules", lambda: sync_declared(self.store, declared))

    async def _run(self) -> None:
        while not self._stopping:
            try:
                idle = await self.run_once()
            except Exception as exc:  # Redis away: back off, keep the loop alive
                log.warning("schedule claim failed; retrying", error=f"{type(exc).__name__}: {exc}")
                idle = 1.0
            if idle > 0:
                await asyncio.sleep(idle)

    async def run_once(self) -> float:
        """Claim what is due and act on it; returns how long to sleep before the next claim."""
        claimed = await self.store.claim_schedules(CLAIM_LIMIT, self.lease_ms)
        now = claimed.now_ms
        soonest = claimed.earliest_ms
        if claimed.names:
            found = {s.name: s for s in await self.store.read_schedules(claimed.names)}
            for name in claimed.names:
                if self._stopping:
                    return 0  # what was claimed stays leased and comes due again
                stored = found.get(name)
                if not isinstance(stored, Schedule):
                    # Deleted meanwhile, or not a schedule (written by hand): never due again.
                    if stored is not None:
                        log.error("unreadable schedule left out", schedule=name, error=stored.error)
                    await self.store.drop_schedule_claim(name)
                    continue
                try:
                    next_ms = await self.act(stored, now)
                except Exception:
                    # Its lease makes it due again; one schedule never stops the others.
                    log.exception("schedule tick failed", schedule=name, tick=stored.next_ms)
                    continue
                if next_ms is not None:
                    soonest = next_ms if soonest is None else min(soonest, next_ms)
        if len(claimed.names) >= CLAIM_LIMIT:
            return 0
        if soonest is None:
            return self.max_idle
        return min(self.max_idle, max(MIN_IDLE, (soonest - now) / 1000))

    async def act(self, schedule: Schedule, now: int) -> int | None:
        """Act on the claimed schedule's next tick; returns its next tick after that (None:
        another claimer or a change got there first)."""
        spec = schedule.spec
        try:
            recurrence = Recurrence.of(spec)
        except InvalidArgumentError as exc:
            # A time zone this host lacks, say: another scheduler may know it (the lease).
            log.error("schedule cannot be computed here", schedule=spec.name, error=str(exc))
            return None
        tick = schedule.next_ms
        if tick > now:  # its due entry was stale: put it back where its next tick says
            kept = Advance(next_ms=tick, plan_ms=schedule.plan_ms)
            return tick if await self.store.advance_schedule(spec.name, tick, kept) else None
        plan_ms = schedule.plan_ms
        existing = await self.store.status(run_id_for(spec.name, tick))
        # Not part of a catch-up already committed, nor started by a claimer that died
        # before it advanced: the missed-tick policy decides which due ticks fire.
        if tick > plan_ms and not existing.get(sh.RUN):
            chosen = plan(recurrence, tick, now, spec.missed)
            if chosen.fire != (tick,) or chosen.missed:
                if not await self._commit(spec.name, tick, chosen, now):
                    return None
                if not chosen.fire:
                    return chosen.resume_ms
                tick, plan_ms = chosen.fire[0], chosen.fire[-1]
                existing = await self.store.status(run_id_for(spec.name, tick))
        return await self._fire(schedule, recurrence, tick, plan_ms, now, existing)

    async def _commit(self, name: str, tick: int, chosen: Plan, now: int) -> bool:
        """Record, before firing anything, which due ticks fire and how many are let go.

        The schedule's next tick becomes the first to fire (or, with none, the first
        after now) and ``plan`` the last, so whoever claims it next fires the same
        ones. False if the compare-and-set on ``tick`` was refused.
        """
        commit = Advance(
            next_ms=chosen.fire[0] if chosen.fire else chosen.resume_ms,
            plan_ms=chosen.fire[-1] if chosen.fire else 0,
            tick_ms=None if chosen.fire else chosen.newest_missed,
            outcome=None if chosen.fire else TickOutcome.MISSED,
            missed=chosen.missed,
            missed_tick_ms=chosen.newest_missed,
        )
        if not await self.store.advance_schedule(name, tick, commit):
            return False
        if chosen.missed and chosen.newest_missed is not None:
            late = now - chosen.newest_missed
            self.observers.after_schedule_ticks(name, TickOutcome.MISSED.value, chosen.missed, late)
            log.warning(
                "schedule ticks missed",
                schedule=name,
                missed=chosen.missed if chosen.exact else f"at least {chosen.missed}",
                newest_missed=_iso(chosen.newest_missed),
                catching_up=len(chosen.fire),
            )
        return True

    async def _fire(
        self,
        schedule: Schedule,
        recurrence: Recurrence,
        tick: int,
        plan_ms: int,
        now: int,
        existing: dict[str, str],
    ) -> int | None:
        """Start the tick's run (unless it has one, or overlaps) and advance past the tick.

        ``existing``: the status hash of the tick's run id, as read just before.
        """
        spec = schedule.spec
        run_id = run_id_for(spec.name, tick)
        if existing.get(sh.RUN):
            # Started by a claimer that died before it advanced (or, if of another
            # workflow, a run that took the id: this tick cannot have its own).
            same = existing.get(sh.WORKFLOW) == spec.workflow
            outcome = TickOutcome.STARTED if same else TickOutcome.CONFLICT
        elif spec.overlap is Overlap.SKIP and await self._going(schedule.last_run):
            outcome = TickOutcome.OVERLAP
        else:
            outcome = await self._start(schedule, run_id, tick)
            if outcome is TickOutcome.STARTED:
                self.observers.after_schedule_run_started(spec.name, run_id)
        next_ms = recurrence.after(tick)
        advance = Advance(
            next_ms=next_ms,
            plan_ms=plan_ms,
            tick_ms=tick,
            outcome=outcome,
            run_id=run_id if outcome is TickOutcome.STARTED else None,
        )
        if not await self.store.advance_schedule(spec.name, tick, advance):
            return None  # another claimer recorded this tick (its run is the same one)
        self.observers.after_schedule_ticks(spec.name, outcome.value, 1, now - tick)
        log.info(
            "schedule tick",
            schedule=spec.name,
            tick=_iso(tick),
            outcome=outcome.value,
            run_id=run_id,
            late_ms=now - tick,
        )
        return next_ms

    async def _start(self, schedule: Schedule, run_id: str, tick: int) -> TickOutcome:
        """Record the tick's run_created and activate it (an activation the broker will not
        take is left to the reconciler, as for a producer's start)."""
        spec = schedule.spec
        args, kwargs = spec.arguments()
        definition = self.registry.find(spec.workflow)
        record = RunCreated(
            workflow=spec.workflow,
            args=args,
            kwargs=kwargs,
            retention_ms=definition.retention_ms if definition is not None else None,
            schedule=ScheduleRef(spec.name, tick),
        )
        created = run_created(
            record, what=f"arguments of schedule {spec.name!r}", offload_args=True
        )
        try:
            await self.store.append(run_id, [created])
        except WorkflowMismatchError as exc:
            log.error("schedule tick's run id is taken", schedule=spec.name, error=str(exc))
            return TickOutcome.CONFLICT
        activation = Activation(run_id=run_id, reason="schedule")
        await publish_recorded(self.broker, activation, "run_created", PUBLISH_DEADLINE)
        return TickOutcome.STARTED

    async def _going(self, run_id: str | None) -> bool:
        """Whether the run (or the chain it continued as) is still going."""
        for _ in range(CHAIN_HOPS):
            if run_id is None:
                return False
            state, last = await self.store.run_tail(run_id)
            if not state:
                return False  # gone (removed by retention)
            if state not in RUN_TERMINAL_STATES:
                return True
            if state != RunStatus.COMPLETED or not last:
                return False
            end = await self.store.read_event(run_id, last)
            record = end.record if end is not None else None
            run_id = record.continued_as if isinstance(record, RunCompleted) else None
        return True


def _iso(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).isoformat(timespec="seconds")
