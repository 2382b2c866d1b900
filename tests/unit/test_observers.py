"""Observers given to a worker and a scheduler see each hook; an empty list records nothing."""

from __future__ import annotations

from typing import TypeVar

import structlog
from ledgerflow.broker import MemoryBroker
from ledgerflow.eventlog.events import EventType
from ledgerflow.eventlog.memory_store import MemoryEventStore
from ledgerflow.eventlog.names import Names
from ledgerflow.scheduler import Client
from ledgerflow.scheduler.service import Scheduler
from ledgerflow.worker.service import Worker

import ledgerflow as lf
from ledgerflow.ops.metrics import sample
from ledgerflow.ops.observer import Observer, StepAttempt

from .helpers import unique_namespace

T = TypeVar("T")


@lf.step(name="obs_double")
async def double(x: int) -> int:
    seen.append(dict(structlog.contextvars.get_contextvars()))
    return 2 * x


@lf.workflow(name="obs_twice")
async def twice(x: int) -> int:
    return await double(await double(x))


seen: list[dict[str, object]] = []


class Recorder(Observer):
    def __init__(self) -> None:
        self.calls: list[tuple[object, ...]] = []

    def before_step_call(self, attempt: StepAttempt) -> None:
        self.calls.append(("before", attempt.step, attempt.attempt))

    def after_step_call(self, attempt: StepAttempt) -> None:
        self.calls.append(("after", attempt.step, attempt.attempt))

    def after_step_recorded(self, step: str, event: EventType, duration: float | None) -> None:
        self.calls.append(("recorded", step, event, duration is not None))

    def after_replay(self, run_id: str, trigger_ms: int) -> None:
        self.calls.append(("replayed", run_id))

    def before_dispatch(self, run_id: str, steps: list[T]) -> list[T]:
        self.calls.append(("dispatch", run_id, len(steps)))
        return steps

    def after_publish_steps(self, run_id: str) -> None:
        self.calls.append(("published", run_id))


async def test_the_services_call_the_observers_they_are_given_and_no_others() -> None:
    names = Names(unique_namespace())
    store, broker = MemoryEventStore(names), MemoryBroker(names)
    await broker.connect()
    at_work, scheduling = Recorder(), Recorder()
    worker = Worker(store, broker, observers=[at_work])
    scheduler = Scheduler(store, broker, observers=[scheduling])
    started = sample("ledgerflow_steps_started_total", {"step": "obs_double"})
    seen.clear()
    await worker.start()
    await scheduler.start()
    try:
        run = await Client(store, broker).start(twice, 3)
        assert await run.result(timeout=10) == 12
    finally:
        await scheduler.stop()
        await worker.stop()
        await broker.close()
        await store.close()
    assert (
        at_work.calls
        == [
            ("recorded", "obs_double", EventType.STEP_STARTED, False),
            ("before", "obs_double", 1),
            ("after", "obs_double", 1),
            ("recorded", "obs_double", EventType.STEP_COMPLETED, True),
        ]
        * 2
    )
    run_id = run.run_id
    assert scheduling.calls.count(("dispatch", run_id, 1)) == 2
    assert scheduling.calls.count(("published", run_id)) == 2
    assert scheduling.calls.count(("replayed", run_id)) == 3
    # Without the standard observers: no metrics, no step fields bound for the step's code.
    assert sample("ledgerflow_steps_started_total", {"step": "obs_double"}) == started
    assert seen == [{}, {}]
