"""Replay a run's log through its workflow code to decide what happens next.

Each step call gets a correlation id from its position in one sequence per run
(s1, s2, ...). Creation events in the log are indexed first; outcome events are
then delivered one at a time, in log order, running the workflow to quiescence
after each. That makes the result independent of how the log was batched, so
an instance fed incrementally (sticky cache) and one replayed from scratch
always reach the same state and issue the same commands.
"""

from __future__ import annotations

import asyncio
import contextvars
import datetime as dt
import hashlib
import random as _random
import uuid as _uuid
from collections.abc import Coroutine, Iterable
from dataclasses import dataclass
from typing import Any

from eventlog.errors import ReplayDivergenceError, StepFailedError
from eventlog.events import RUN_TERMINAL, Event, EventType
from eventlog.fold import ErrorInfo
from eventlog.store import START
from worker.dispatch import current_dispatcher
from worker.registry import StepDef

from .loop import DeterministicLoop
from .registry import WorkflowDef

_CREATIONS = frozenset({EventType.STEP_CREATED, EventType.WAIT_CREATED, EventType.HOOK_CREATED})

current_instance: contextvars.ContextVar[WorkflowInstance | None] = contextvars.ContextVar(
    "ledgerflow_workflow_instance", default=None
)


def fingerprint(blob: bytes) -> str:
    return hashlib.sha256(blob).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class StepCommand:
    """A step the workflow asked for that the log does not record yet."""

    corr: str
    step: StepDef
    args: bytes

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.args)


@dataclass(frozen=True, slots=True)
class Completed:
    result: Any


@dataclass(frozen=True, slots=True)
class Failed:
    error: BaseException


Outcome = Completed | Failed


@dataclass(frozen=True, slots=True)
class Decision:
    commands: list[StepCommand]
    outcome: Outcome | None


class WorkflowInstance:
    """One live workflow: its private loop, its task, and what the log told it so far."""

    def __init__(
        self, run_id: str, definition: WorkflowDef, args: list[Any], kwargs: dict[str, Any]
    ) -> None:
        self.run_id = run_id
        self.definition = definition
        self.args = args
        self.kwargs = kwargs
        self.cursor = START
        self.events_seen = 0
        self.divergence: ReplayDivergenceError | None = None
        self._now_ms = 0
        # typeshed marks the I/O half of AbstractEventLoop abstract; it raises here.
        self.loop = DeterministicLoop(clock=lambda: self._now_ms / 1000.0)  # type: ignore[abstract]
        self._seq = 0
        self._uuid_seq = 0
        self._random = _random.Random(run_id)
        self._recorded: dict[str, Event] = {}
        self._issued: dict[str, str] = {}  # corr -> name of the step this instance asked for
        self._futures: dict[str, asyncio.Future[Any]] = {}
        self._early: dict[str, Event] = {}
        self._new: list[StepCommand] = []
        self._task: asyncio.Task[Any] | None = None

    # --- feeding the log ------------------------------------------------------------------

    def feed(self, events: Iterable[Event]) -> None:
        batch = list(events)
        for event in batch:
            if event.type in _CREATIONS:
                self._recorded[event.corr] = event
                self._check_issued(event)
        for event in batch:
            self._now_ms = event.ts
            if self.divergence is None:
                self._deliver(event)
            self.cursor = event.id
            self.events_seen += 1
        self._check_unissued()

    def _deliver(self, event: Event) -> None:
        if event.type is EventType.RUN_STARTED:
            if self._task is None:
                self._start()
        elif event.type in (EventType.STEP_COMPLETED, EventType.STEP_FAILED):
            future = self._futures.get(event.corr)
            if future is None:
                self._early[event.corr] = event
                return
            self._settle(future, event)
        else:
            return
        self.loop.run_ready()

    def _start(self) -> None:
        context = contextvars.copy_context()
        context.run(current_dispatcher.set, self)
        context.run(current_instance.set, self)
        coro = self.definition.fn(*self.args, **self.kwargs)
        self._task = self.loop.create_task(coro, context=context)

    def _settle(self, future: asyncio.Future[Any], event: Event) -> None:
        if future.done():
            return
        data = event.data if isinstance(event.data, dict) else {}
        if event.type is EventType.STEP_COMPLETED:
            future.set_result(data.get("result"))
            return
        error = ErrorInfo.from_data(data.get("error"))
        created = self._recorded.get(event.corr)
        name = str(created.data.get("name", "")) if created is not None else event.corr
        future.set_exception(
            StepFailedError(
                name,
                error.type,
                error.message,
                error.traceback,
                attempts=int(data.get("attempt", 1) or 1),
            )
        )

    def _check_issued(self, event: Event) -> None:
        """A creation recorded after this instance asked for that position must match the ask.

        Without this a cached instance would take another step's result (sticky
        cache and full replay would disagree).
        """
        asked = self._issued.get(event.corr)
        if asked is None or self.divergence is not None:
            return
        recorded_name = event.data.get("name") if isinstance(event.data, dict) else None
        if event.type is not EventType.STEP_CREATED or recorded_name != asked:
            self.divergence = ReplayDivergenceError(
                self.run_id, event.corr, _describe(event), f"step {asked!r}"
            )

    def _check_unissued(self) -> None:
        if self.divergence is not None or self._task is None:
            return
        missing = sorted(
            (c for c in self._recorded if c not in self._issued), key=lambda c: int(c[1:])
        )
        if missing:
            event = self._recorded[missing[0]]
            self.divergence = ReplayDivergenceError(
                self.run_id,
                missing[0],
                _describe(event),
                "nothing there (the call was removed or the code took another path)",
            )

    # --- what the workflow asks for (the Dispatcher protocol) ---------------------------

    def call_step(
        self, step: StepDef, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Coroutine[Any, Any, Any]:
        return self._call_step(step, args, kwargs)

    async def _call_step(self, step: StepDef, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        blob = step.encode_args(args, kwargs)
        corr = self._next_corr()
        self._check_recorded(corr, f"step {step.name!r}", EventType.STEP_CREATED, step.name)
        future = self.loop.create_future()
        self._futures[corr] = future
        self._issued[corr] = step.name
        if corr not in self._recorded:
            self._new.append(StepCommand(corr=corr, step=step, args=blob))
        early = self._early.pop(corr, None)
        if early is not None:
            self._settle(future, early)
        return await future

    def _next_corr(self) -> str:
        self._seq += 1
        return f"s{self._seq}"

    def _check_recorded(self, corr: str, now: str, expected: EventType, name: str) -> None:
        event = self._recorded.get(corr)
        if event is None:
            return
        recorded_name = event.data.get("name") if isinstance(event.data, dict) else None
        if event.type is not expected or recorded_name != name:
            self.divergence = ReplayDivergenceError(self.run_id, corr, _describe(event), now)
            raise self.divergence

    # --- determinism helpers ------------------------------------------------------------

    def now(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self._now_ms / 1000.0, tz=dt.UTC)

    def uuid4(self) -> _uuid.UUID:
        self._uuid_seq += 1
        digest = hashlib.sha256(f"{self.run_id}:{self._uuid_seq}".encode()).digest()
        return _uuid.UUID(bytes=digest[:16], version=4)

    def random(self) -> float:
        return self._random.random()

    # --- the verdict ----------------------------------------------------------------------

    def decide(self) -> Decision:
        commands, self._new = self._new, []
        outcome = self._outcome()
        if outcome is not None:
            # Steps the workflow started but never awaited would only run after the
            # run ended (and be refused): a finished run schedules nothing more.
            commands = []
        return Decision(commands=commands, outcome=outcome)

    def _outcome(self) -> Outcome | None:
        if self.divergence is not None:
            return Failed(self.divergence)
        if self._task is None or not self._task.done():
            return None
        if self._task.cancelled():
            return Failed(asyncio.CancelledError("the workflow task was cancelled"))
        exc = self._task.exception()
        if exc is not None:
            return Failed(exc)
        return Completed(self._task.result())

    def close(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            self.loop.run_ready()
        self.loop.close()


def _describe(event: Event) -> str:
    if event.type is EventType.STEP_CREATED and isinstance(event.data, dict):
        return f"step {event.data.get('name')!r}"
    return event.type.value.replace("_created", "")


def is_terminal(event: Event) -> bool:
    return event.type in RUN_TERMINAL
