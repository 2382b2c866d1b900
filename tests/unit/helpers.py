"""Shared helpers for the fast unit tests: in-memory backends, synthetic logs, replays."""

from __future__ import annotations

import itertools
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from ledgerflow.broker import MemoryBroker
from ledgerflow.eventlog.events import Event, EventType
from ledgerflow.eventlog.memory_store import MemoryEventStore
from ledgerflow.eventlog.names import Names
from ledgerflow.scheduler.client import Client
from ledgerflow.scheduler.registry import WorkflowDef
from ledgerflow.scheduler.replay import Completed, Decision, Failed, StepCommand, WorkflowInstance
from ledgerflow.scheduler.service import Scheduler
from ledgerflow.worker.service import Worker

WorkflowFn = Callable[..., Coroutine[Any, Any, Any]]


def unique_namespace() -> str:
    return f"unit{uuid.uuid4().hex[:10]}"


def counts(events: Sequence[Event]) -> Counter[str]:
    return Counter(e.type.value for e in events)


@dataclass
class Stack:
    names: Names
    store: MemoryEventStore
    broker: MemoryBroker
    worker: Worker
    scheduler: Scheduler
    client: Client


@asynccontextmanager
async def stack(
    *, run_worker: bool = True, run_scheduler: bool = True, queues: list[str] | None = None
) -> AsyncIterator[Stack]:
    """Worker + Scheduler + Client built by hand on the in-memory backends."""
    names = Names(unique_namespace())
    store = MemoryEventStore(names)
    broker = MemoryBroker(names)
    await broker.connect()
    worker = Worker(store, broker, queues=queues or ["default"], concurrency=8)
    scheduler = Scheduler(store, broker)
    if run_worker:
        await worker.start()
    if run_scheduler:
        await scheduler.start()
    try:
        yield Stack(names, store, broker, worker, scheduler, Client(store, broker))
    finally:
        await scheduler.stop()
        await worker.stop()
        await broker.close()
        await store.close()


# --- replaying a recorded log through a fresh instance -------------------------------


def instance_for(run_id: str, events: Sequence[Event], fn: WorkflowFn) -> WorkflowInstance:
    """A fresh instance of ``fn`` for the run whose log is ``events`` (as a cache miss does)."""
    created = events[0]
    assert created.type is EventType.RUN_CREATED
    definition = WorkflowDef(name=str(created.data["workflow"]), fn=fn)
    return WorkflowInstance(
        run_id, definition, list(created.data["args"]), dict(created.data["kwargs"])
    )


def replay_at_once(
    run_id: str, events: Sequence[Event], fn: WorkflowFn, upto: int | None = None
) -> Decision:
    """A fresh instance fed ``events[:upto]`` in one batch (a cache miss)."""
    instance = instance_for(run_id, events, fn)
    instance.feed(events[:upto])
    try:
        return instance.decide()
    finally:
        instance.close()


def summary(outcome: Completed | Failed | None) -> tuple[Any, ...] | None:
    """Outcomes compared by value (exceptions by type and message)."""
    if outcome is None:
        return None
    if isinstance(outcome, Completed):
        return ("completed", outcome.result)
    return ("failed", type(outcome.error).__name__, str(outcome.error))


def command_key(command: StepCommand) -> tuple[str, str, str, bytes]:
    return (command.corr, command.step.name, command.step.queue, command.args)


# --- synthetic logs --------------------------------------------------------------------


class LogBuilder:
    """Build a run's log by hand, with increasing ids and timestamps."""

    def __init__(self, workflow: str, args: list[Any] | None = None, ts: int = 1_700_000_000_000):
        self._seq = itertools.count()
        self.ts = ts
        self.workflow = workflow
        self.args = args or []

    def event(self, type_: EventType, corr: str = "", data: Any = None) -> Event:
        n = next(self._seq)
        self.ts += 7
        return Event(id=f"{self.ts}-{n}", type=type_, corr=corr, data=data or {}, ts=self.ts)

    def start(self) -> list[Event]:
        return [
            self.event(
                EventType.RUN_CREATED,
                data={"workflow": self.workflow, "args": self.args, "kwargs": {}},
            ),
            self.event(EventType.RUN_STARTED),
        ]

    def created(self, command: StepCommand) -> Event:
        return self.event(EventType.STEP_CREATED, command.corr, command.record().as_data())

    def completed(self, corr: str, result: Any) -> Event:
        return self.event(EventType.STEP_COMPLETED, corr, {"result": result, "attempt": 1})

    def failed(self, corr: str, type_name: str, message: str) -> Event:
        error = {"type": type_name, "message": message, "traceback": "Traceback: ..."}
        return self.event(EventType.STEP_FAILED, corr, {"error": error, "attempt": 1})
