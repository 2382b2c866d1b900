"""The timer loop: act on due entries of the timer index.

Every scheduler runs one. Entries are claimed atomically under a lease, so two
schedulers never act on the same entry at once and an entry whose claimer died
comes due again by itself. Each action checks the log's view first (through
the status hash), so a late or repeated firing does nothing harmful:

- retry: dispatch the next attempt of a step that is still retrying;
- hb: a running attempt whose heartbeat went stale is failed (and retried or
  given up on by its policy), otherwise the check is re-armed;
- wait: complete a durable sleep and activate its run.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Protocol

import structlog
from ledgerflow.broker import Activation, Broker, StepMessage
from ledgerflow.broker.messages import step_message
from ledgerflow.eventlog.errors import (
    EventLogError,
    HeartbeatTimeoutError,
    RunClosedError,
    RunNotFoundError,
    SerializationError,
)
from ledgerflow.eventlog.events import Event, EventType, NewEvent
from ledgerflow.eventlog.kinds import RunStatus, StepStatus
from ledgerflow.eventlog.records import StepCreated, StepStarted
from ledgerflow.eventlog.retrying import retrying
from ledgerflow.eventlog.store import EventLog, RunIndex, TimerIndex
from ledgerflow.eventlog.timers import DueTimer, Timer, TimerKind
from ledgerflow.worker.outcome import failed, failure_event
from ledgerflow.worker.registry import StepRegistry, steps

from ledgerflow.ops.observer import Observer, Observers
from ledgerflow.ops.standard import standard_observers

from .background import BackgroundLoop

log = structlog.get_logger("ledgerflow.timers")

TICK = 0.02
BATCH = 500
LEASE_MS = 15_000
RETRY_FAILED_MS = 1_000


class TimerStore(EventLog, RunIndex, TimerIndex, Protocol):
    """What the timer loop uses: it claims due timers and appends what they mean."""


class TimerLoop(BackgroundLoop):
    task_name = "ledgerflow-timers"

    def __init__(
        self,
        store: TimerStore,
        broker: Broker,
        *,
        registry: StepRegistry = steps,
        tick: float = TICK,
        observers: Observer | None = None,
    ) -> None:
        self.store = store
        self.broker = broker
        self.registry = registry
        self.tick = tick
        self.observers = Observers(standard_observers()) if observers is None else observers
        self.fired = 0
        super().__init__()

    async def _run(self) -> None:
        while not self._stopping:
            try:
                claimed = await self.store.claim_timers(BATCH, LEASE_MS)
            except Exception as exc:  # Redis away: back off, keep the loop alive
                log.warning("timer claim failed; retrying", error=f"{type(exc).__name__}: {exc}")
                await asyncio.sleep(1.0)
                continue
            for due in claimed:
                if self._stopping:
                    return  # unacted entries stay leased and come due again
                try:
                    await self.fire(due)
                except Exception:
                    # Never lose the loop over one entry: try again soon (and if even
                    # that fails, the lease makes it due again by itself).
                    log.exception(
                        "timer action failed", run_id=due.timer.run_id, timer=due.timer.member
                    )
                    with contextlib.suppress(Exception):
                        await self.store.add_timer(due.timer, delay_ms=RETRY_FAILED_MS)
            if len(claimed) < BATCH:
                await asyncio.sleep(self.tick)

    async def fire(self, due: DueTimer) -> None:
        timer = due.timer
        if timer.kind is TimerKind.STEP_RETRY:
            await self._retry(due)
        elif timer.kind is TimerKind.HEARTBEAT:
            await self._heartbeat(due)
        elif timer.kind is TimerKind.WAIT:
            await self._wake(due)
        elif timer.kind is TimerKind.THROTTLE:
            await self._resend(due)
        self.fired += 1

    async def _retry(self, due: DueTimer) -> None:
        timer = due.timer
        entity = await self.store.entity(timer.run_id, timer.corr)
        if (
            entity.run_state == RunStatus.STARTED
            and entity.state == StepStatus.RETRYING
            and entity.attempt == timer.attempt - 1
            and entity.created_id is not None
        ):
            try:
                created = await self.store.read_event(timer.run_id, entity.created_id)
                message = _retry_message(timer, created, entity.workflow)
            except SerializationError as exc:
                # The step can never be sent again: fail it (its workflow decides what
                # next) rather than re-arming a timer that fails the same way forever.
                await self._give_up(due, exc)
                return
            if message is not None:
                await retrying("publish retry", lambda: self.broker.publish_step(message))
                self._fired(due, entity.now)
                log.info(
                    "step retry dispatched",
                    run_id=timer.run_id,
                    workflow=entity.workflow,
                    step=message.step_name,
                    corr=timer.corr,
                    attempt=timer.attempt,
                    late_ms=entity.now - due.due,
                )
        await self.store.release_timer(due)

    async def _resend(self, due: DueTimer) -> None:
        """Send a step that waited for its rate limit (``lf.RateLimit``) again, if it still waits.

        It waited before it started: created (a first attempt) or retrying (a later
        one). Anything else means it moved on (run over, started elsewhere): nothing.
        """
        timer = due.timer
        entity = await self.store.entity(timer.run_id, timer.corr)
        waiting = (entity.state == StepStatus.CREATED and timer.attempt == 1) or (
            entity.state == StepStatus.RETRYING and entity.attempt == timer.attempt - 1
        )
        if entity.run_state == RunStatus.STARTED and waiting and entity.created_id is not None:
            try:
                created = await self.store.read_event(timer.run_id, entity.created_id)
                message = _retry_message(timer, created, entity.workflow)
            except SerializationError as exc:
                await self._give_up(due, exc)
                return
            if message is not None:
                await retrying("publish throttled step", lambda: self.broker.publish_step(message))
                self._fired(due, entity.now)
        await self.store.release_timer(due)

    async def _give_up(self, due: DueTimer, exc: SerializationError) -> None:
        timer = due.timer
        error = SerializationError(
            f"step {timer.corr} of run {timer.run_id!r} cannot be retried: its step_created "
            f"cannot be read ({exc})"
        )
        log.error(
            "retry impossible: step failed", run_id=timer.run_id, corr=timer.corr, error=str(exc)
        )
        # A retrying step fails only from an attempt: record the attempt the timer was
        # for as started here and failed at once (as a worker records a lost step).
        started = NewEvent.of(
            EventType.STEP_STARTED,
            timer.corr,
            StepStarted(worker="timer-loop").as_data(),
            attempt=timer.attempt,
        )
        try:
            await self.store.append(
                timer.run_id, [started, failed(timer.corr, timer.attempt, error)]
            )
        except EventLogError as refused:  # moved on meanwhile: nothing to fail any more
            log.info("retry impossible, and the step moved on", error=str(refused))
        else:
            await self._publish_activation(timer.run_id)
        await self.store.release_timer(due)

    async def _heartbeat(self, due: DueTimer) -> None:
        timer = due.timer
        entity = await self.store.entity(timer.run_id, timer.corr)
        if not (
            entity.run_state == RunStatus.STARTED
            and entity.state == StepStatus.STARTED
            and entity.attempt == timer.attempt
        ):
            await self.store.release_timer(due)
            return
        last = entity.heartbeat or 0
        if entity.now - last < timer.timeout_ms:
            await self.store.add_timer(timer, due_ms=last + timer.timeout_ms)
            return
        created = (
            await self.store.read_event(timer.run_id, entity.created_id)
            if entity.created_id
            else None
        )
        name = created.record.name if created and isinstance(created.record, StepCreated) else ""
        policy = self.registry.retry_policy_for(name)
        error = HeartbeatTimeoutError(
            f"step {name!r} attempt {timer.attempt}: no heartbeat for "
            f"{(entity.now - last) / 1000:.1f} s (limit {timer.timeout_ms / 1000:g} s); "
            "its worker is presumed lost"
        )
        event = failure_event(timer.run_id, timer.corr, timer.attempt, error, policy)
        try:
            await self.store.append(timer.run_id, [event])
        except (RunClosedError, EventLogError):
            pass
        else:
            self._fired(due, entity.now)
            self.observers.after_step_recorded(name, event.type, None)
            log.warning(
                "stale heartbeat: attempt failed",
                run_id=timer.run_id,
                workflow=entity.workflow,
                step=name,
                corr=timer.corr,
                attempt=timer.attempt,
            )
            if event.type is EventType.STEP_FAILED:
                await self._publish_activation(timer.run_id)
        await self.store.release_timer(due)

    async def _wake(self, due: DueTimer) -> None:
        timer = due.timer
        event = NewEvent.of(EventType.WAIT_COMPLETED, timer.corr, {"due": due.due})
        try:
            results = await self.store.append(timer.run_id, [event])
        except RunClosedError:
            results = []
        except RunNotFoundError:
            # The run ended and retention removed it (and its timers) meanwhile.
            log.info("timer of a removed run dropped", run_id=timer.run_id, timer=timer.member)
            results = []
        if results and results[0].appended:
            entity = await self.store.entity(timer.run_id, timer.corr)
            self._fired(due, entity.now)
            await self._publish_activation(timer.run_id)
        await self.store.release_timer(due)

    def _fired(self, due: DueTimer, now_ms: int) -> None:
        """A timer was acted on at ``now_ms`` (the Redis clock): record how late."""
        self.observers.after_timer_fired(due.timer.kind.value, now_ms - due.due)

    async def _publish_activation(self, run_id: str) -> None:
        activation = Activation(run_id=run_id, reason="timer")
        await retrying("publish activation", lambda: self.broker.publish_activation(activation))


def _retry_message(timer: Timer, created: Event | None, workflow: str) -> StepMessage | None:
    """The next attempt's message, from the step's step_created; None if it is gone."""
    if created is None:
        return None
    record = created.record
    if not isinstance(record, StepCreated) or record.args is None:
        raise SerializationError(f"event {created.id} is not a step_created this code can read")
    return step_message(timer.run_id, timer.corr, record, attempt=timer.attempt, workflow=workflow)
