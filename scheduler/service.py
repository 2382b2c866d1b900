"""The scheduler: turn run activations into appends and step messages.

For each activation it replays the run (from the sticky cache, or from the
start), appends what the workflow newly asked for in one atomic batch, publishes
the step messages with confirms, and only then acks. Activations of one run are
serialized in this process and coalesced: an activation that arrives while the
run is being handled is acked at once and marks the run dirty, and the handler
in flight goes round once more before acking its own message, so nothing is
lost even if the process dies at any point.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import structlog
from ledgerflow.broker import Activation, Broker, Consumer, Delivery, StepMessage
from ledgerflow.broker.messages import step_message
from ledgerflow.eventlog import statushash as sh
from ledgerflow.eventlog.blobs import BlobCache
from ledgerflow.eventlog.errors import (
    HistoryLimitError,
    IllegalTransitionError,
    LedgerflowError,
    LogTruncatedError,
    MalformedMessageError,
    RunClosedError,
    SerializationError,
    UnknownTypeError,
    UnknownWorkflowError,
    WorkflowTimeoutError,
)
from ledgerflow.eventlog.events import (
    RUN_TERMINAL,
    SCHEDULER_WRITES,
    AppendResult,
    Event,
    EventType,
    NewEvent,
    id_before,
)
from ledgerflow.eventlog.kinds import RUN_TERMINAL_STATES, HookStatus
from ledgerflow.eventlog.records import (
    RECORDED_BY,
    WAIT_PURPOSE,
    RunCreated,
    RunStarted,
    StepCreated,
)
from ledgerflow.eventlog.retrying import is_transient, retrying
from ledgerflow.eventlog.schedules import ScheduleStore
from ledgerflow.eventlog.slots import Slots
from ledgerflow.eventlog.store import EventLog, RunIndex, TimerIndex
from ledgerflow.eventlog.timers import Timer, TimerKind
from ledgerflow.worker.outcome import error_info
from ledgerflow.worker.registry import StepRegistry, steps
from ledgerflow.worker.service import Worker

from ledgerflow.ops.observer import Observer, Observers
from ledgerflow.ops.standard import standard_observers

from . import sandbox, watchdog
from .cache import DEFAULT_CACHE_SIZE, InstanceCache
from .cancellation import cancel_children_of
from .chains import (
    CONTINUE_REASON,
    abandon_successor,
    activate_successor,
    continued_end,
    create_successor,
)
from .children import parent_of, report_to_parent, start_child
from .historylimits import HistoryLimits, HistoryWatch
from .hookclash import append_settling_clashes
from .registry import WorkflowRegistry, workflows
from .replay import (
    ChildCommand,
    Completed,
    Continued,
    Decision,
    DisposeHookCommand,
    Failed,
    HookCommand,
    StepCommand,
    WaitCommand,
    WorkflowInstance,
)
from .runlimits import free_run_slot, take_run_slot
from .schedule_loop import ScheduleLoop
from .schedules import ScheduleRegistry
from .timers import TimerLoop
from .unreadable import fail_unreadable_run
from .values import delivered_values

log = structlog.get_logger("ledgerflow.scheduler")

DEFAULT_PREFETCH = 64
DISPOSED_BY_WORKFLOW = "disposed by the workflow"
MAX_TRUNCATED_REPLAYS = 3
"""Fresh replays after a refused decision (LogTruncatedError) before the activation is retried."""
APPEND_CHUNK = 500
"""Events per append call: about 3 ms of Redis time, so other clients never wait long."""


@dataclass
class _Busy:
    dirty: bool = False


class SchedulerStore(EventLog, RunIndex, TimerIndex, Slots, ScheduleStore, Protocol):
    """What a scheduler uses: run logs and where runs stand, and (for its timer and schedule
    loops, and workflows' run limits) timers, schedules and slots."""


class Scheduler:
    """Replays runs when activated and acts on what their workflows ask for.

    ``start`` installs the replay sandbox (and the stall watchdog) for this
    process; ``stop`` removes them. ``observers`` watch each replay and dispatch
    (metrics, fault points); by default the standard ones (``ledgerflow.ops.standard``).
    Every scheduler fires the namespace's schedules (``schedule_loop``); with
    ``schedules`` (the code's ``lf.schedule`` declarations) it writes those into the
    store first, as the CLI's schedulers do.
    """

    def __init__(
        self,
        store: SchedulerStore,
        broker: Broker,
        *,
        registry: WorkflowRegistry = workflows,
        step_registry: StepRegistry = steps,
        cache_size: int = DEFAULT_CACHE_SIZE,
        prefetch: int = DEFAULT_PREFETCH,
        local: Worker | None = None,
        append_chunk: int = APPEND_CHUNK,
        stall_budget: float = watchdog.DEFAULT_BUDGET,
        observers: Sequence[Observer] | None = None,
        history: HistoryLimits | None = None,
        schedules: ScheduleRegistry | None = None,
    ) -> None:
        self.store = store
        self.broker = broker
        self.registry = registry
        self.cache = InstanceCache(cache_size)
        # Offloaded values replay delivers, kept by bytes across activations and misses.
        self._blobs = BlobCache(store.blob_store)
        self.prefetch = prefetch
        self.append_chunk = append_chunk
        # A worker in this process: the steps it has room for run here, at once.
        self.local = local
        if local is not None:
            local.attach_scheduler(self.request_replay)
        self._busy: dict[str, _Busy] = {}
        self._consumer: Consumer | None = None
        self._watching = False
        self._sandboxed = False
        self.stall_budget = stall_budget
        # Metrics, fault points: see ledgerflow.ops.observer (shared with the timer loop).
        self.observers = Observers(standard_observers() if observers is None else observers)
        self.timers = TimerLoop(store, broker, registry=step_registry, observers=self.observers)
        self.schedule_loop = ScheduleLoop(
            store, broker, registry=registry, declared=schedules, observers=self.observers
        )
        # How long a run's log may grow (--history-warn / --history-limit).
        self.history = HistoryWatch(history or HistoryLimits.from_env(), self.observers)

    async def start(self) -> None:
        # Workflow code that reads the clock or randomness fails loudly (not at replay).
        if not self._sandboxed:
            sandbox.install()
            self._sandboxed = True
        # Workflow code that never awaits would hold up every run of this process.
        self._watching = watchdog.install(self.stall_budget)
        self._consumer = await self.broker.consume(
            self.broker.names.runs_queue, self.handle_delivery, prefetch=self.prefetch
        )
        self.timers.start()
        await self.schedule_loop.sync()
        self.schedule_loop.start()
        log.info("scheduler started", workflows=self.registry.names())

    async def stop(self) -> None:
        if self._watching:
            watchdog.uninstall()
            self._watching = False
        if self._sandboxed:
            sandbox.uninstall()
            self._sandboxed = False
        await self.timers.stop()
        await self.schedule_loop.stop()
        if self._consumer is not None:
            await self._consumer.cancel()
            self._consumer = None

    async def handle_delivery(self, delivery: Delivery) -> None:
        """Replay the run an activation names, then ack it (or park it, or fail the run)."""
        message = await self.broker.receive(
            delivery, Activation, wrong_kind="the runs queue received a non-activation message"
        )
        if message is None:
            return
        try:
            await self.request_replay(message.run_id)
        except (UnknownWorkflowError, UnknownTypeError) as exc:
            # A deploy can fix these: park the activation once, to requeue after the fix.
            await self._dead_letter(delivery, f"run {message.run_id}: {exc}")
            return
        except SerializationError as exc:
            # An event no deploy can read (too deep, too large, malformed): the run ends.
            await fail_unreadable_run(self.store, self.broker, message.run_id, exc, _failed(exc))
        await delivery.ack()

    async def request_replay(self, run_id: str) -> None:
        """Replay the run now, or, if a replay of it is under way here, make it go round again.

        The entry point for an activation from the queue and for one from this
        process's own worker (eager dispatch). Returning means the run's log up
        to this call has been acted on, or will be by the round in flight.
        """
        busy = self._busy.get(run_id)
        if busy is not None:
            busy.dirty = True
            return
        busy = self._busy[run_id] = _Busy()
        try:
            while True:
                busy.dirty = False
                # Idempotent, so a Redis or broker outage is waited out here rather
                # than bounced back to the queue (where redeliveries would count
                # towards the delivery limit and end in the dead-letter queue).
                await retrying("replay run", lambda: self._replay_or_forget(run_id))
                if not busy.dirty:
                    break
        finally:
            del self._busy[run_id]

    async def _replay_or_forget(self, run_id: str) -> None:
        """Replay; on any failure drop the cached instance so a retry replays afresh."""
        try:
            await self.replay_run(run_id)
        except BaseException:
            # BaseException too: a consumer channel closing (a broker restart) cancels
            # the handler, and a cached instance that already handed out its commands
            # would then never publish them on the redelivery.
            self.cache.evict(run_id)
            raise

    async def replay_run(self, run_id: str, *, truncations: int = 0) -> None:
        """Replay one run up to the end of its log and act on what the workflow now asks.

        Safe to call any number of times. Callers normally go through
        ``request_replay``, which serializes and coalesces replays of a run.
        """
        instance = self.cache.get(run_id)
        if instance is None:
            if await self._finished_elsewhere(run_id):
                return
            count = await self.store.event_count(run_id)
            if self.history.limits.over_limit(count):
                await self._fail_over_limit(run_id, count)
                return
            events = await self.store.read(run_id)
            if not events:
                log.warning("activation for a run with no log", run_id=run_id)
                return
            terminal = next((e for e in events if e.type in RUN_TERMINAL), None)
            if terminal is not None:
                # Finished: make sure a parent heard about it (idempotent repair).
                parent = parent_of(events[0])
                if parent is not None:
                    await report_to_parent(self.store, self.broker, parent, terminal)
                return
            first = (await self._values(run_id, events[:1]))[0]
            instance = self._instantiate(run_id, first)
            if not any(e.type is EventType.RUN_STARTED for e in events):
                if not await take_run_slot(
                    self.store,
                    self.broker,
                    instance.definition,
                    run_id,
                    instance.args,
                    instance.kwargs,
                ):
                    return  # parked: its activation comes back when a slot frees up
                started = RunStarted(timeout_ms=instance.definition.timeout_ms)
                await self.store.append(
                    run_id, [NewEvent.of(EventType.RUN_STARTED, data=started.as_data())]
                )
                events = await self.store.read(run_id)
        else:
            # Read from the last entry the instance saw, included: if the log no longer
            # holds it, the log lost its newest entries (a Redis failover before they
            # were replicated) and the instance is ahead of it. Feeding it on would act
            # on a history the log does not have (a step it believes created, which no
            # one will ever complete; a divergence): replay what the log says instead.
            seen = instance.cursor  # another replay of this run may move it meanwhile
            events = await self.store.read(run_id, after=id_before(seen))
            if not events or events[0].id != seen:
                if events:
                    log.warning(
                        "cached run is ahead of its log (entries lost); replaying the log",
                        run_id=run_id,
                        seen=seen,
                        log_resumes_at=events[0].id,
                    )
                self.cache.evict(run_id)
                await self.replay_run(run_id, truncations=truncations)
                return
            events = events[1:]
            if not events:
                return
            if any(e.type in RUN_TERMINAL for e in events):
                self.cache.evict(run_id)
                return
            if self.history.limits.over_limit(instance.events_seen + len(events)):
                self.cache.evict(run_id)
                await self._fail_over_limit(run_id, instance.events_seen + len(events))
                return
        trigger_ms = _trigger_ms(events)
        instance.feed(await self._values(run_id, events))
        self.history.observe(run_id, instance.definition.name, instance.events_seen)
        decision = instance.decide()
        try:
            finished = await self._record(instance, decision)
        except LogTruncatedError as exc:
            # Between this replay's read and its append, the log lost the entries the
            # decision was made from (a failover): nothing was written. Decide again
            # from the log as it now stands.
            self.cache.evict(run_id)
            if truncations >= MAX_TRUNCATED_REPLAYS:
                raise
            log.warning(
                "log lost the entries a decision was based on; replaying the log",
                run_id=run_id,
                based_on=exc.based_on,
            )
            await self.replay_run(run_id, truncations=truncations + 1)
            return
        self.observers.after_replay(run_id, trigger_ms)
        if finished:
            self.cache.evict(run_id)
            self.history.forget(run_id)
            await free_run_slot(
                self.store,
                self.broker,
                instance.definition,
                run_id,
                instance.args,
                instance.kwargs,
            )
        else:
            self.cache.put(instance)

    async def _finished_elsewhere(self, run_id: str) -> bool:
        """A finished run that is not cached here costs two small reads, not a full replay.

        Late activations of finished runs are common (a step's other copy, the
        reconciler, a coalesced duplicate); reading a 600,000-event log to learn
        the run is over would block Redis and this process for a second. The
        status hash says where the log ends; the log itself confirms the end.
        """
        state, last = await self.store.run_tail(run_id)
        if state not in RUN_TERMINAL_STATES or not last:
            return False
        terminal = await self.store.read_event(run_id, last)
        if terminal is None or terminal.type not in RUN_TERMINAL:
            return False  # the hash is a cache: when in doubt, replay the log
        first = await self.store.read(run_id, count=1)
        parent = parent_of(first[0]) if first else None
        if parent is not None:
            await report_to_parent(self.store, self.broker, parent, terminal)
        return True

    async def _values(self, run_id: str, events: list[Event]) -> list[Event]:
        """The events with the offloaded values replay delivers fetched (``values``)."""
        return await delivered_values(events, self._blobs.fetcher(run_id))

    def _instantiate(self, run_id: str, first: Event) -> WorkflowInstance:
        created = first.record
        if not isinstance(created, RunCreated):
            raise MalformedMessageError(f"run {run_id!r}: the log does not start with run_created")
        definition = self.registry.get(created.workflow or "")
        return WorkflowInstance(
            run_id,
            definition,
            list(created.args),
            dict(created.kwargs),
            parent=parent_of(first),
            carried=created.carried,
            start_at_ms=created.start_at_ms,
            priority=created.priority,
        )

    async def _record(self, instance: WorkflowInstance, decision: Decision) -> bool:
        """Append the decision in one batch, then publish and start what it asked for.

        Returns True if the run ended. A run that ends disposes its live hooks in
        the same batch, and reports its outcome to its parent, if it has one.
        """
        run_id = instance.run_id
        successor: str | None = None
        try:
            created = {
                c.corr: c.record()
                for c in decision.commands
                if isinstance(c, (StepCommand, ChildCommand))
            }
            batch = [
                self._step_created(c, created[c.corr])
                if isinstance(c, (StepCommand, ChildCommand))
                else self._created(instance, c)
                for c in decision.commands
            ]
            outcome = decision.outcome
            if isinstance(outcome, Continued):
                # The successor first: the old run's end must never name a run that
                # does not exist (chains.py says why in this order, and how it heals).
                outcome = await self._continue(instance, outcome)
                successor = outcome.run_id
            if outcome is not None:
                batch += [NewEvent.of(EventType.HOOK_DISPOSED, c) for c in instance.live_hooks()]
                batch.append(self._terminal(instance, outcome))
            hooks = {c.corr: c for c in decision.commands if isinstance(c, HookCommand)}
            results, conflicted = await self._append_chunked(
                run_id, batch, hooks, based_on=instance.cursor
            )
        except RunClosedError:
            if successor is not None:
                await abandon_successor(self.store, run_id, successor)
            return True
        except Exception as exc:
            if not _unrecordable(exc):
                raise
            await self._give_up(instance, exc)
            return True
        fresh = [c for c, r in zip(decision.commands, results, strict=False) if r.appended]
        workflow = instance.definition.name
        steps = [
            step_message(run_id, c.corr, created[c.corr], attempt=1, workflow=workflow)
            for c in fresh
            if isinstance(c, StepCommand)
        ]
        steps = self._run_here(self.observers.before_dispatch(run_id, steps))
        if steps:
            await retrying("publish steps", lambda: self.broker.publish_steps(steps))
            self.observers.after_publish_steps(run_id)
        if decision.outcome is None:
            # Children asked for just now, plus any recorded earlier whose start a
            # crash may have cut short (start_child is idempotent).
            children = {c.corr: c for c in instance.unstarted_children()}
            children.update({c.corr: c for c in fresh if isinstance(c, ChildCommand)})
            for child in children.values():
                known = child.workflow in self.registry
                kept = self.registry.get(child.workflow).retention_ms if known else None
                await start_child(self.store, self.broker, run_id, child, retention_ms=kept)
            if conflicted:
                await self._replay_again(run_id)  # the workflow must see its conflicted hook
            return False
        log.info(
            "run finished",
            run_id=run_id,
            workflow=instance.definition.name,
            outcome=batch[-1].type.value,
            **_continued_as(decision.outcome),
        )
        if isinstance(decision.outcome, Failed) and isinstance(
            decision.outcome.error, WorkflowTimeoutError
        ):
            reason = f"parent run {run_id} did not finish within its timeout"
            await cancel_children_of(self.store, self.broker, run_id, reason)
        if successor is not None:
            await activate_successor(self.broker, successor)
        elif instance.parent is not None:
            await report_to_parent(self.store, self.broker, instance.parent, batch[-1])
        return True

    async def _continue(self, instance: WorkflowInstance, outcome: Continued) -> Continued:
        """Dispose the run's hooks, carry what they hold untaken, and create the successor."""
        run_id = instance.run_id
        live = instance.live_hooks()
        if live:
            reason = {"reason": CONTINUE_REASON}
            disposals = [NewEvent.of(EventType.HOOK_DISPOSED, corr, reason) for corr in live]
            await self.store.append(run_id, disposals)
            # Payloads that arrived since this replay read the log, up to the disposal.
            instance.feed(await self.store.read(run_id, after=instance.cursor))
        outcome = dataclasses.replace(outcome, carried=instance.untaken_payloads())
        definition = instance.definition
        await create_successor(
            self.store,
            run_id,
            definition.name,
            outcome,
            instance.parent,
            retention_ms=definition.retention_ms,
        )
        self.observers.after_continuation_started(run_id, outcome.run_id)
        return outcome

    async def _fail_over_limit(self, run_id: str, count: int) -> None:
        """Fail a run whose log passed the history limit, without reading the log.

        Its live hooks are found in the status hash (disposed in the same batch,
        as at every end) and its parent, if any, in its first entry.
        """
        status = await self.store.status(run_id)
        workflow = status.get(sh.WORKFLOW, "")
        error = HistoryLimitError(
            f"run {run_id!r} of workflow {workflow!r} has {count} events, past the history "
            f"limit of {self.history.limits.limit} (--history-limit); a workflow that loops "
            "should call lf.continue_as_new to go on with a fresh history"
        )
        live = [
            field.removeprefix(sh.ENTITY)
            for field, value in status.items()
            if field.startswith(sh.ENTITY) and value == sh.entity_value("hook", HookStatus.CREATED)
        ]
        failed = _failed(error, by_scheduler=True)
        disposals = [NewEvent.of(EventType.HOOK_DISPOSED, corr) for corr in sorted(live)]
        try:
            await self.store.append(run_id, [*disposals, failed])
        except RunClosedError:
            return
        log.error("run failed: history limit", run_id=run_id, workflow=workflow, events=count)
        self.observers.after_history_limit(run_id, workflow, count)
        self.history.forget(run_id)
        first = await self.store.read(run_id, count=1)
        parent = parent_of(first[0]) if first else None
        if parent is not None:
            await report_to_parent(self.store, self.broker, parent, failed)

    async def _give_up(self, instance: WorkflowInstance, error: Exception) -> None:
        """A decision that can never be recorded (a bad value, a bug) fails the run, saying why.

        Retrying would not help: the activation would come back until the dead-letter
        queue took it, and the run would stay started forever.
        """
        run_id = instance.run_id
        log.error(
            "decision cannot be recorded; run failed",
            run_id=run_id,
            workflow=instance.definition.name,
            error=f"{type(error).__name__}: {error}",
        )
        failed = _failed(error, by_scheduler=True)
        disposals = [NewEvent.of(EventType.HOOK_DISPOSED, c) for c in instance.live_hooks()]
        try:
            await self.store.append(run_id, [*disposals, failed])
        except RunClosedError:
            return
        if instance.parent is not None:
            await report_to_parent(self.store, self.broker, instance.parent, failed)

    async def _replay_again(self, run_id: str) -> None:
        """Have the run replayed once more: by the round in flight here, else through the queue."""
        busy = self._busy.get(run_id)
        if busy is not None:
            busy.dirty = True
            return
        activation = Activation(run_id=run_id, reason="hook conflict")
        await retrying("publish activation", lambda: self.broker.publish_activation(activation))

    async def _append_chunked(
        self,
        run_id: str,
        batch: list[NewEvent],
        hooks: dict[str, HookCommand],
        *,
        based_on: str,
    ) -> tuple[list[AppendResult], bool]:
        """Append a decision in chunks, so a 10,000-step fan-out never blocks Redis for long.

        Each chunk is atomic; a crash between chunks leaves a prefix of the
        decision, which the next replay completes (the written creations come back
        as duplicates) and the reconciler dispatches, as after any crash between an
        append and its publish. The run's terminal event is always in the last chunk.
        Every chunk is conditional on the log still holding ``based_on``, the newest
        entry the decision was made from (LogTruncatedError otherwise).
        """
        results: list[AppendResult] = []
        conflicted = False
        for start in range(0, len(batch), self.append_chunk):
            chunk = batch[start : start + self.append_chunk]
            written, clashed = await append_settling_clashes(
                self.store, run_id, chunk, hooks, based_on=based_on
            )
            results += written
            conflicted = conflicted or clashed
        return results, conflicted

    def _run_here(self, steps: list[StepMessage]) -> list[StepMessage]:
        """Hand what this process's worker has room for to it (eager dispatch); return the rest."""
        if self.local is None or not steps:
            return steps
        rest: list[StepMessage] = []
        here: list[StepMessage] = []
        room: dict[str, int] = {}
        for step in steps:
            if step.queue not in room:
                room[step.queue] = self.local.local_capacity(step.queue)
            if room[step.queue] > 0:
                room[step.queue] -= 1
                here.append(step)
            else:
                rest.append(step)
        self.local.run_local(here)
        return rest

    @staticmethod
    def _step_created(command: StepCommand | ChildCommand, record: StepCreated) -> NewEvent:
        if isinstance(command, StepCommand):
            # The worker's step_started must carry the same call fingerprint.
            return NewEvent.of(
                EventType.STEP_CREATED,
                command.corr,
                record.as_data(),
                fingerprint=record.call_fingerprint,
                max_size=None,
                blobs=command.blobs,
            )
        return NewEvent.of(
            EventType.STEP_CREATED,
            command.corr,
            record.as_data(),
            what=f"arguments of child workflow {command.workflow!r}",
            envelope=2,
        )

    @staticmethod
    def _created(
        instance: WorkflowInstance, command: WaitCommand | HookCommand | DisposeHookCommand
    ) -> NewEvent:
        if isinstance(command, DisposeHookCommand):
            return NewEvent.of(
                EventType.HOOK_DISPOSED, command.corr, {"reason": DISPOSED_BY_WORKFLOW}
            )
        if isinstance(command, WaitCommand):
            return NewEvent.of(
                EventType.WAIT_CREATED,
                command.corr,
                {"due": command.due_ms, WAIT_PURPOSE: command.purpose}
                if command.purpose
                else {"due": command.due_ms},
                timer=Timer(TimerKind.WAIT, instance.run_id, command.corr),
                due_ms=command.due_ms,
            )
        return NewEvent.of(
            EventType.HOOK_CREATED,
            command.corr,
            {"token": command.token, "metadata": command.metadata},
            token=command.token,
        )

    @staticmethod
    def _terminal(instance: WorkflowInstance, outcome: Completed | Failed | Continued) -> NewEvent:
        if isinstance(outcome, Continued):
            return continued_end(instance.run_id, instance.definition.name, outcome)
        if isinstance(outcome, Completed):
            try:
                return outcome.recorded_as(instance.definition.name)
            except SerializationError as exc:
                return _failed(exc)
        return _failed(outcome.error)

    async def _dead_letter(self, delivery: Delivery, reason: str) -> None:
        log.warning("activation dead-lettered", queue=delivery.queue, reason=reason)
        await self.broker.dead_letter(delivery, reason)


def _trigger_ms(events: list[Event]) -> int:
    """When what an activation reacts to happened: its newest event not written by a scheduler.

    The start of ``ledgerflow_activation_latency_seconds`` (see ledgerflow/ops/metrics.py):
    a step outcome, a wake-up, a hook delivery, or run_created for a new run.
    """
    return next((e.ts for e in reversed(events) if e.type not in SCHEDULER_WRITES), events[-1].ts)


def _failed(error: BaseException, *, by_scheduler: bool = False) -> NewEvent:
    data: dict[str, object] = {"error": error_info(error)}
    if by_scheduler:
        data[RECORDED_BY] = "scheduler"  # not the workflow's outcome (see history.replay)
    return NewEvent.of(EventType.RUN_FAILED, data=data, max_size=None)


def _continued_as(outcome: Completed | Failed | Continued | None) -> dict[str, str]:
    """The log field naming a continuation's successor (nothing for another end)."""
    return {"continued_as": outcome.run_id} if isinstance(outcome, Continued) else {}


def _unrecordable(exc: Exception) -> bool:
    """An error no retry of the same decision can cure: a bad value, or a bug.

    Infrastructure errors are retried; an illegal transition means another writer
    got there first, and a log that lost a decision's basis is replayed afresh:
    in both, a fresh replay sorts it out.
    """
    if is_transient(exc) or isinstance(exc, (IllegalTransitionError, LogTruncatedError)):
        return False
    return isinstance(exc, (LedgerflowError, ValueError, TypeError, ArithmeticError))
