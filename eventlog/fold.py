"""Fold a run's events into its state: the one way any view of a run is built.

Pure and total over legal logs, so the status hash, the CLI's timeline and the
reconciler's picture of a run can all be rebuilt from the stream alone.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .events import Event, EventType

CALL_FINGERPRINT = "call_fp"
"""step_created data: the call's fingerprint (name and arguments) step_started must match."""
RECORDED_BY = "recorded_by"
"""run_failed data: "scheduler" when the scheduler failed the run itself (a decision it
could not record), so the failure is not the workflow's outcome."""
HOOK_CONFLICT = "conflict"
"""hook_created data: {"run": owner} when the token was taken; such a hook is never live."""


@dataclass
class ErrorInfo:
    type: str
    message: str
    traceback: str = ""

    @classmethod
    def from_data(cls, data: Any) -> ErrorInfo:
        if not isinstance(data, dict):
            return cls(type="Error", message=str(data))
        return cls(
            type=str(data.get("type", "Error")),
            message=str(data.get("message", "")),
            traceback=str(data.get("traceback", "")),
        )


@dataclass
class StepState:
    id: str
    name: str
    queue: str
    status: str = "created"
    attempt: int = 0
    args: bytes = b""
    result: Any = None
    error: ErrorInfo | None = None
    retry_due: int | None = None
    child_run_id: str | None = None
    created_ts: int = 0
    started_ts: int | None = None
    finished_ts: int | None = None


@dataclass
class WaitState:
    id: str
    due: int
    status: str = "created"
    created_ts: int = 0
    finished_ts: int | None = None


@dataclass
class HookState:
    id: str
    token: str
    metadata: Any = None
    status: str = "created"
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

    @property
    def finished(self) -> bool:
        return self.status in ("completed", "failed", "cancelled")


def apply(state: RunState, event: Event) -> RunState:
    """Apply one event in place; returns the state for chaining."""
    data = event.data if isinstance(event.data, dict) else {}
    state.last_event_id = event.id
    state.event_count += 1
    t = event.type
    if t is EventType.RUN_CREATED:
        state.workflow = str(data.get("workflow", ""))
        state.args = list(data.get("args", []))
        state.kwargs = dict(data.get("kwargs", {}))
        state.status = "created"
        state.created_ts = event.ts
    elif t is EventType.RUN_STARTED:
        state.status = "started"
        state.started_ts = event.ts
    elif t is EventType.RUN_COMPLETED:
        state.status = "completed"
        state.result = data.get("result")
        state.finished_ts = event.ts
    elif t is EventType.RUN_FAILED:
        state.status = "failed"
        state.error = ErrorInfo.from_data(data.get("error"))
        state.finished_ts = event.ts
    elif t is EventType.RUN_CANCELLED:
        state.status = "cancelled"
        state.cancel_reason = str(data.get("reason", ""))
        state.finished_ts = event.ts
    elif t is EventType.STEP_CREATED:
        state.steps[event.corr] = StepState(
            id=event.corr,
            name=str(data.get("name", "")),
            queue=str(data.get("queue", "")),
            # Stored encoded; anything else (bytes(10**12) would allocate a terabyte) is none.
            args=args if isinstance(args := data.get("args"), bytes) else b"",
            child_run_id=str(data["child_run_id"]) if data.get("child_run_id") else None,
            created_ts=event.ts,
        )
    elif t.kind == "step":
        step = state.steps.get(event.corr)
        if step is None:
            return state
        step.attempt = max(step.attempt, int(data.get("attempt", step.attempt) or 0))
        if t is EventType.STEP_STARTED:
            step.status = "started"
            step.started_ts = event.ts
            step.retry_due = None
        elif t is EventType.STEP_COMPLETED:
            step.status = "completed"
            step.result = data.get("result")
            step.finished_ts = event.ts
        elif t is EventType.STEP_FAILED:
            step.status = "failed"
            step.error = ErrorInfo.from_data(data.get("error"))
            step.finished_ts = event.ts
        elif t is EventType.STEP_RETRYING:
            step.status = "retrying"
            step.error = ErrorInfo.from_data(data.get("error"))
            due = data.get("due")
            step.retry_due = (
                int(due) if due is not None else event.ts + int(data.get("delay_ms", 0))
            )
    elif t is EventType.WAIT_CREATED:
        state.waits[event.corr] = WaitState(
            id=event.corr, due=int(data.get("due", 0)), created_ts=event.ts
        )
    elif t is EventType.WAIT_COMPLETED:
        wait = state.waits.get(event.corr)
        if wait is not None:
            wait.status = "completed"
            wait.finished_ts = event.ts
    elif t is EventType.HOOK_CREATED:
        conflict = data.get(HOOK_CONFLICT)
        state.hooks[event.corr] = HookState(
            id=event.corr,
            token=str(data.get("token", "")),
            metadata=data.get("metadata"),
            created_ts=event.ts,
            conflict=str(conflict.get("run", "")) if isinstance(conflict, dict) else None,
        )
    elif t is EventType.HOOK_RECEIVED:
        hook = state.hooks.get(event.corr)
        if hook is not None:
            hook.received += 1
    elif t is EventType.HOOK_DISPOSED:
        hook = state.hooks.get(event.corr)
        if hook is not None:
            hook.status = "disposed"
    return state


def fold(run_id: str, events: Iterable[Event]) -> RunState:
    state = RunState(run_id=run_id)
    for event in events:
        apply(state, event)
    return state
