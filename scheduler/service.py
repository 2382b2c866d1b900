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

import traceback
from dataclasses import dataclass

import structlog

from broker import Activation, Broker, Consumer, Delivery, StepMessage, decode_message
from eventlog.errors import (
    MalformedMessageError,
    RunClosedError,
    SerializationError,
    UnknownWorkflowError,
)
from eventlog.events import RUN_TERMINAL, Event, EventType, NewEvent
from eventlog.retrying import retrying
from eventlog.store import EventStore
from worker.outcome import error_info
from worker.registry import StepRegistry, steps

from .cache import DEFAULT_CACHE_SIZE, InstanceCache
from .registry import WorkflowRegistry, workflows
from .replay import Completed, Decision, Failed, StepCommand, WorkflowInstance
from .timers import TimerLoop

log = structlog.get_logger("ledgerflow.scheduler")

DEFAULT_PREFETCH = 64


@dataclass
class _Busy:
    dirty: bool = False


class Scheduler:
    def __init__(
        self,
        store: EventStore,
        broker: Broker,
        *,
        registry: WorkflowRegistry = workflows,
        step_registry: StepRegistry = steps,
        cache_size: int = DEFAULT_CACHE_SIZE,
        prefetch: int = DEFAULT_PREFETCH,
    ) -> None:
        self.store = store
        self.broker = broker
        self.registry = registry
        self.cache = InstanceCache(cache_size)
        self.prefetch = prefetch
        self._busy: dict[str, _Busy] = {}
        self._consumer: Consumer | None = None
        self.timers = TimerLoop(store, broker, registry=step_registry)

    async def start(self) -> None:
        self._consumer = await self.broker.consume(
            self.broker.names.runs_queue, self.handle, prefetch=self.prefetch
        )
        self.timers.start()
        log.info("scheduler started", workflows=self.registry.names())

    async def stop(self) -> None:
        await self.timers.stop()
        if self._consumer is not None:
            await self._consumer.cancel()
            self._consumer = None

    async def handle(self, delivery: Delivery) -> None:
        try:
            message = decode_message(delivery.body)
        except MalformedMessageError as exc:
            await self._dead_letter(delivery, f"malformed message: {exc}")
            return
        if not isinstance(message, Activation):
            await self._dead_letter(delivery, "the runs queue received a non-activation message")
            return
        run_id = message.run_id
        busy = self._busy.get(run_id)
        if busy is not None:
            busy.dirty = True
            await delivery.ack()
            return
        busy = self._busy[run_id] = _Busy()
        try:
            while True:
                busy.dirty = False
                try:
                    # Idempotent, so a Redis or broker outage is waited out here rather
                    # than bounced back to the queue (where redeliveries would count
                    # towards the delivery limit and end in the dead-letter queue).
                    await retrying("activate run", lambda: self._activate_or_forget(run_id))
                except UnknownWorkflowError as exc:
                    await self._dead_letter(delivery, str(exc))
                    return
                if not busy.dirty:
                    break
        finally:
            del self._busy[run_id]
        await delivery.ack()

    async def _activate_or_forget(self, run_id: str) -> None:
        """Activate; on any failure drop the cached instance so a retry replays afresh."""
        try:
            await self.activate(run_id)
        except Exception:
            self.cache.evict(run_id)
            raise

    async def activate(self, run_id: str) -> None:
        """Bring one run up to date with its log; safe to call any number of times."""
        instance = self.cache.get(run_id)
        if instance is None:
            events = await self.store.read(run_id)
            if not events:
                log.warning("activation for a run with no log", run_id=run_id)
                return
            if any(e.type in RUN_TERMINAL for e in events):
                return
            instance = self._instantiate(run_id, events[0])
            if not any(e.type is EventType.RUN_STARTED for e in events):
                await self.store.append(run_id, [NewEvent.of(EventType.RUN_STARTED)])
                events = await self.store.read(run_id)
        else:
            events = await self.store.read(run_id, after=instance.cursor)
            if not events:
                return
            if any(e.type in RUN_TERMINAL for e in events):
                self.cache.evict(run_id)
                return
        instance.feed(events)
        decision = instance.decide()
        finished = await self._record(instance, decision)
        if finished:
            self.cache.evict(run_id)
        else:
            self.cache.put(instance)

    def _instantiate(self, run_id: str, first: Event) -> WorkflowInstance:
        data = first.data if isinstance(first.data, dict) else {}
        if first.type is not EventType.RUN_CREATED:
            raise MalformedMessageError(f"run {run_id!r}: the log does not start with run_created")
        definition = self.registry.get(str(data.get("workflow", "")))
        return WorkflowInstance(
            run_id, definition, list(data.get("args", [])), dict(data.get("kwargs", {}))
        )

    async def _record(self, instance: WorkflowInstance, decision: Decision) -> bool:
        """Append the decision in one batch and publish its steps; True if the run ended."""
        run_id = instance.run_id
        batch = [self._step_created(c) for c in decision.commands]
        if decision.outcome is not None:
            batch.append(self._terminal(instance, decision.outcome))
        if not batch:
            return False
        try:
            results = await self.store.append(run_id, batch)
        except RunClosedError:
            return True
        fresh = [c for c, r in zip(decision.commands, results, strict=False) if r.appended]
        if fresh:
            messages = [self._message(run_id, c) for c in fresh]
            await retrying("publish steps", lambda: self.broker.publish_steps(messages))
        if decision.outcome is not None:
            log.info(
                "run finished",
                run_id=run_id,
                workflow=instance.definition.name,
                outcome=batch[-1].type.value,
            )
            return True
        return False

    @staticmethod
    def _step_created(command: StepCommand) -> NewEvent:
        return NewEvent.of(
            EventType.STEP_CREATED,
            command.corr,
            {
                "name": command.step.name,
                "queue": command.step.queue,
                "args": command.args,
                "fp": command.fingerprint,
            },
            max_size=None,
        )

    @staticmethod
    def _terminal(instance: WorkflowInstance, outcome: Completed | Failed) -> NewEvent:
        if isinstance(outcome, Completed):
            try:
                return NewEvent.of(
                    EventType.RUN_COMPLETED,
                    data={"result": outcome.result},
                    what=f"result of workflow {instance.definition.name!r}",
                )
            except SerializationError as exc:
                return _failed(exc)
        return _failed(outcome.error)

    @staticmethod
    def _message(run_id: str, command: StepCommand) -> StepMessage:
        return StepMessage(
            run_id=run_id,
            step_id=command.corr,
            step_name=command.step.name,
            attempt=1,
            args=command.args,
            queue=command.step.queue,
        )

    async def _dead_letter(self, delivery: Delivery, reason: str) -> None:
        log.warning("activation dead-lettered", queue=delivery.queue, reason=reason)
        await self.broker.dead_letter(delivery, reason)


def _failed(error: BaseException) -> NewEvent:
    info = error_info(error)
    if not info["traceback"].strip():
        info["traceback"] = "".join(traceback.format_exception(error))
    return NewEvent.of(EventType.RUN_FAILED, data={"error": info}, max_size=None)
