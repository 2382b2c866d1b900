"""Fold a run's events into its state: the one way any view of a run is built.

Pure and total over legal logs, so the status hash, the CLI's timeline and the
reconciler's picture of a run can all be rebuilt from the stream alone.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from . import records as r
from .events import Event
from .kinds import RUN_TERMINAL_STATES, HookStatus, RunStatus, StepStatus, WaitStatus
from .records import ErrorInfo

__all__ = ["ErrorInfo", "HookState", "RunState", "StepState", "WaitState", "apply", "fold"]


@dataclass
class StepState:
    id: str
    name: str
    queue: str
    status: str = StepStatus.CREATED
    attempt: int = 0
    args: bytes = b""
    result: Any = None
    error: ErrorInfo | None = None
    retry_due: int | None = None
    child_run_id: str | None = None
    created: r.StepCreated | None = None  # what step_created recorded (a message is built from it)
    created_ts: int = 0
    started_ts: int | None = None
    finished_ts: int | None = None

    @property
    def child(self) -> r.ChildSpec | None:
        """The child run this step stands for, if it is one."""
        return self.created.child if self.created is not None else None


@dataclass
class WaitState:
    id: str
    due: int
    status: str = WaitStatus.CREATED
    created_ts: int = 0
    finished_ts: int | None = None
    purpose: str = ""  # "start" / "deadline": ledgerflow's own waits (records.WaitCreated)


@dataclass
class HookState:
    id: str
    token: str
    metadata: Any = None
    status: str = HookStatus.CREATED
    received: int = 0
    created_ts: int = 0
    conflict: str | None = None  # the run holding the token, if it was taken


@dataclass
class RunState:
    run_id: str
    workflow: str = ""
    status: str = "absent"
    args: list[Any] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)
    result: Any = None
    error: ErrorInfo | None = None
    cancel_reason: str | None = None
    created_ts: int | None = None
    started_ts: int | None = None
    finished_ts: int | None = None
    steps: dict[str, StepState] = field(default_factory=dict)
    waits: dict[str, WaitState] = field(default_factory=dict)
    hooks: dict[str, HookState] = field(default_factory=dict)
    last_event_id: str | None = None
    event_count: int = 0
    # The chain links of lf.continue_as_new: the run this one continues, and the one
    # it continued as (its end then holds no result of its own).
    continued_from: str | None = None
    continued_as: str | None = None
    schedule: r.ScheduleRef | None = None  # the schedule and tick that started it, if one did

    @property
    def finished(self) -> bool:
        return self.status in RUN_TERMINAL_STATES


def apply(state: RunState, event: Event) -> RunState:
    """Apply one event in place; returns the state for chaining."""
    state.last_event_id = event.id
    state.event_count += 1
    record = event.record
    if isinstance(record, r.RunCreated):
        state.workflow = record.workflow or ""
        state.args = list(record.args)
        state.kwargs = dict(record.kwargs)
        state.status = RunStatus.CREATED
        state.created_ts = event.ts
        state.continued_from = record.continued_from
        state.schedule = record.schedule
    elif isinstance(record, r.RunStarted):
        state.status = RunStatus.STARTED
        state.started_ts = event.ts
    elif isinstance(record, r.RunCompleted):
        state.status = RunStatus.COMPLETED
        state.result = record.result
        state.continued_as = record.continued_as
        state.finished_ts = event.ts
    elif isinstance(record, r.RunFailed):
        state.status = RunStatus.FAILED
        state.error = record.error
        state.finished_ts = event.ts
    elif isinstance(record, r.RunCancelled):
        state.status = RunStatus.CANCELLED
        state.cancel_reason = record.reason
        state.finished_ts = event.ts
    elif isinstance(record, r.StepCreated):
        state.steps[event.corr] = StepState(
            id=event.corr,
            name=record.name,
            queue=record.queue,
            # Stored encoded; anything else (bytes(10**12) would allocate a terabyte) is none.
            args=record.args or b"",
            child_run_id=(record.child.run_id or None) if record.child else None,
            created=record,
            created_ts=event.ts,
        )
    elif isinstance(record, (r.StepStarted, r.StepCompleted, r.StepFailed, r.StepRetrying)):
        _apply_step(state.steps.get(event.corr), record, event.ts)
    elif isinstance(record, r.WaitCreated):
        state.waits[event.corr] = WaitState(
            id=event.corr, due=record.due, created_ts=event.ts, purpose=record.purpose
        )
    elif isinstance(record, r.WaitCompleted):
        wait = state.waits.get(event.corr)
        if wait is not None:
            wait.status = WaitStatus.COMPLETED
            wait.finished_ts = event.ts
    elif isinstance(record, r.HookCreated):
        state.hooks[event.corr] = HookState(
            id=event.corr,
            token=record.token,
            metadata=record.metadata,
            created_ts=event.ts,
            conflict=record.conflict,
        )
    elif isinstance(record, r.HookReceived):
        hook = state.hooks.get(event.corr)
        if hook is not None:
            hook.received += 1
    elif isinstance(record, r.HookDisposed):
        hook = state.hooks.get(event.corr)
        if hook is not None:
            hook.status = HookStatus.DISPOSED
    return state


def _apply_step(
    step: StepState | None,
    record: r.StepStarted | r.StepCompleted | r.StepFailed | r.StepRetrying,
    ts: int,
) -> None:
    if step is None:
        return
    step.attempt = max(step.attempt, record.attempt or 0)
    if isinstance(record, r.StepStarted):
        step.status = StepStatus.STARTED
        step.started_ts = ts
        step.retry_due = None
    elif isinstance(record, r.StepCompleted):
        step.status = StepStatus.COMPLETED
        step.result = record.result
        step.finished_ts = ts
    elif isinstance(record, r.StepFailed):
        step.status = StepStatus.FAILED
        step.error = record.error
        step.finished_ts = ts
    else:
        step.status = StepStatus.RETRYING
        step.error = record.error
        step.retry_due = record.due if record.due is not None else ts + record.delay_ms


def fold(run_id: str, events: Iterable[Event]) -> RunState:
    state = RunState(run_id=run_id)
    for event in events:
        apply(state, event)
    return state
