"""Typed event data: one frozen record per event type, decoded once.

A stream entry's ``data`` is a msgpack map whose shape depends on its type. It
is decoded here, when the entry becomes an ``Event`` (``Event.record``), so no
reader has to guess at a dict again: a missing field gets its documented
default (old logs stay readable), and data that is not a map at all (a foreign
XADD, or an undecodable marker a read-only tool sees) gets every default, just
as the readers treated it before. Decoding never raises: a malformed payload is
reported where it matters (the replay, the integrity checks), never by a crash.

The field names and their defaults are the log's format, so they are written
here once: ``names.DEFAULT_STEP_QUEUE`` for a step recorded without a queue,
``CHILD_PREFIX`` for the step that stands for a child run in its parent's log.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from . import errors
from .kinds import EventType
from .names import DEFAULT_STEP_QUEUE, MAX_PRIORITY

CHILD_PREFIX = "workflow:"
"""step_created name prefix of a child run: decoded into ``StepCreated.child``, and only here."""
CALL_FINGERPRINT = "call_fp"
"""step_created data: the call's fingerprint (name and arguments) step_started must match."""
RECORDED_BY = "recorded_by"
"""run_failed data: "scheduler" when the scheduler failed the run itself (a decision it
could not record), so the failure is not the workflow's outcome."""
RETENTION = "retention_ms"
"""run_created data: the run's own retention in ms (absent: the namespace default)."""
CONTINUED_AS = "continued_as"
"""run_completed data: the run this one continued as (``lf.continue_as_new``); absent for
an ordinary end, so logs written before continuation read as ordinary ends."""
CONTINUED_FROM = "continued_from"
START_AT = "start_at"
PRIORITY = "priority"
WAIT_PURPOSE = "purpose"
WAIT_PURPOSES = frozenset({"start", "deadline"})
TIMEOUT = "timeout_ms"
"""run_created data: the run this one continues (the predecessor whose end names it)."""
CARRIED = "hook_payloads"
"""run_created data of a continuation: the payloads its predecessor's hooks received and
its code never took, in order; ``CARRIED_TOKENS`` holds each one's hook token (two flat
lists, so a payload sits no deeper than an argument). The successor's hook with that
token hands them out first."""
CARRIED_TOKENS = "hook_tokens"
SCHEDULE = "schedule"
"""run_created data of a run a schedule started: {"name": schedule, "tick": ms}; absent for
any other run (its id is then ``sched:<name>:<tick>`` too, ``eventlog/schedules.py``)."""
HOOK_CONFLICT = "conflict"
"""hook_created data: {"run": owner} when the token was taken; such a hook is never live."""


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    """A recorded error: its type name, message and traceback text."""

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

    def as_data(self) -> dict[str, str]:
        return {"type": self.type, "message": self.message, "traceback": self.traceback}

    @property
    def is_cancellation(self) -> bool:
        """A run cancelled (a child's cancellation, reported to its parent as a failure)."""
        return errors.canonical_error_name(self.type) == errors.error_type_name(errors.RunCancelled)


@dataclass(frozen=True, slots=True)
class ParentRef:
    """The parent of a child run: its run id and the step that stands for the child there."""

    run_id: str
    corr: str


@dataclass(frozen=True, slots=True)
class ChildSpec:
    """A child run as its parent's step_created records it."""

    workflow: str
    run_id: str
    args: list[Any]
    kwargs: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ScheduleRef:
    """The schedule, and its tick (ms), that started a run."""

    name: str
    tick_ms: int


@dataclass(frozen=True, slots=True)
class RunCreated:
    workflow: str | None = None  # None: recorded without one (a foreign or broken entry)
    args: list[Any] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)
    parent: ParentRef | None = None
    # The run's own retention (ms), from its workflow's decorator; None: the
    # namespace default. The append also puts it in the status hash (``ret``).
    retention_ms: int | None = None
    continued_from: str | None = None  # the run this one continues, if it is a continuation
    carried: dict[str, list[Any]] = field(default_factory=dict)  # CARRIED: token -> payloads
    # When the producer asked the run to begin (epoch ms; ``client.start(start_at=...)``):
    # its workflow code starts with a durable wait until then. None: at once.
    start_at_ms: int | None = None
    schedule: ScheduleRef | None = None  # SCHEDULE: the schedule and tick that started it
    # 0-3: its steps go to that priority's lane (names.lane), its children inherit it.
    priority: int = 0

    def as_data(self) -> dict[str, Any]:
        """The data this record is written as (what a producer or a parent appends)."""
        data: dict[str, Any] = {"workflow": self.workflow, "args": self.args, "kwargs": self.kwargs}
        if self.parent is not None:
            data["parent"] = {"run_id": self.parent.run_id, "corr": self.parent.corr}
        if self.retention_ms is not None:
            data[RETENTION] = self.retention_ms
        if self.continued_from is not None:
            data[CONTINUED_FROM] = self.continued_from
        if self.start_at_ms is not None:
            data[START_AT] = self.start_at_ms
        if self.priority:
            data[PRIORITY] = self.priority
        if self.carried:
            pairs = [(t, p) for t, payloads in self.carried.items() for p in payloads]
            data[CARRIED_TOKENS] = [t for t, _ in pairs]
            data[CARRIED] = [p for _, p in pairs]
        if self.schedule is not None:
            data[SCHEDULE] = {"name": self.schedule.name, "tick": self.schedule.tick_ms}
        return data


@dataclass(frozen=True, slots=True)
class RunStarted:
    # The workflow's timeout (ms) as the scheduler that started the run had it: recorded,
    # so a deploy that adds or changes a timeout never changes a run already going.
    timeout_ms: int | None = None

    def as_data(self) -> dict[str, Any] | None:
        return None if self.timeout_ms is None else {TIMEOUT: self.timeout_ms}


@dataclass(frozen=True, slots=True)
class RunCompleted:
    """The run's end; with ``continued_as``, the end of one link of a chain, not its result.

    A continuation is a completion rather than a terminal state of its own: the
    run did finish (its hooks disposed, nothing more may be appended), every
    reader that knows completed runs (listing, retention, archives, the Lua
    append) keeps working, and a reader that knows nothing of chains sees a
    completed run with no result instead of a state it cannot name.
    """

    result: Any = None
    continued_as: str | None = None

    def as_data(self) -> dict[str, Any]:
        data: dict[str, Any] = {"result": self.result}
        if self.continued_as is not None:
            data[CONTINUED_AS] = self.continued_as
        return data


@dataclass(frozen=True, slots=True)
class RunFailed:
    error: ErrorInfo
    by_scheduler: bool = False  # recorded_by == "scheduler": not the workflow's own outcome


@dataclass(frozen=True, slots=True)
class RunCancelled:
    reason: str = ""


@dataclass(frozen=True, slots=True)
class StepCreated:
    """A step (or, with ``child``, a child run) the workflow asked for; ``name`` as recorded."""

    name: str = ""
    queue: str = DEFAULT_STEP_QUEUE
    # The encoded arguments; None when the field holds something else (not a call
    # this code can run: a retry of it fails instead of guessing).
    args: bytes | None = b""
    call_fingerprint: str = ""
    child: ChildSpec | None = None

    def as_data(self) -> dict[str, Any]:
        """The data this record is written as (the inverse of decoding it)."""
        if self.child is not None:
            return {
                "name": CHILD_PREFIX + self.child.workflow,
                "queue": "",
                "child_run_id": self.child.run_id,
                "child_args": self.child.args,
                "child_kwargs": self.child.kwargs,
            }
        data: dict[str, Any] = {"name": self.name, "queue": self.queue, "args": self.args}
        if self.call_fingerprint:
            data[CALL_FINGERPRINT] = self.call_fingerprint
        return data


@dataclass(frozen=True, slots=True)
class StepStarted:
    attempt: int | None = None
    # The worker that runs it and its limits; None for a start recorded before
    # workers recorded them (the reconciler assumes the default limit then).
    worker: str | None = None
    timeout: float | None = None
    heartbeat_timeout: float | None = None

    def as_data(self) -> dict[str, Any]:
        """The data a worker writes (the attempt travels beside it, in ``NewEvent.of``)."""
        limits = {"timeout": self.timeout, "heartbeat_timeout": self.heartbeat_timeout}
        data: dict[str, Any] = {} if self.worker is None else {"worker": self.worker}
        return {**data, **{k: v for k, v in limits.items() if v is not None}}


@dataclass(frozen=True, slots=True)
class StepCompleted:
    attempt: int | None = None
    result: Any = None


@dataclass(frozen=True, slots=True)
class StepFailed:
    error: ErrorInfo
    attempt: int | None = None


@dataclass(frozen=True, slots=True)
class StepRetrying:
    error: ErrorInfo
    attempt: int | None = None
    due: int | None = None  # absolute ms, when recorded; else ``delay_ms`` after the event
    delay_ms: int = 0


@dataclass(frozen=True, slots=True)
class WaitCreated:
    due: int = 0
    # What ledgerflow itself waits for ("start": client.start's start time, "deadline": the
    # workflow's timeout); "" for the workflow's own sleeps and timeouts.
    purpose: str = ""


@dataclass(frozen=True, slots=True)
class WaitCompleted:
    pass


@dataclass(frozen=True, slots=True)
class HookCreated:
    token: str = ""
    metadata: Any = None
    conflict: str | None = None  # the run holding the token, if it was taken


@dataclass(frozen=True, slots=True)
class HookReceived:
    attempt: int | None = None
    payload: Any = None


@dataclass(frozen=True, slots=True)
class HookDisposed:
    reason: str = ""


Record = (
    RunCreated
    | RunStarted
    | RunCompleted
    | RunFailed
    | RunCancelled
    | StepCreated
    | StepStarted
    | StepCompleted
    | StepFailed
    | StepRetrying
    | WaitCreated
    | WaitCompleted
    | HookCreated
    | HookReceived
    | HookDisposed
)


def _text(data: Mapping[str, Any], key: str, default: str = "") -> str:
    value = data.get(key, default)
    return value if isinstance(value, str) else str(value)


def _optional_text(data: Mapping[str, Any], key: str) -> str | None:
    """A run-id field: a non-empty string, else None (absent in logs written before it)."""
    value = data.get(key)
    return value if isinstance(value, str) and value else None


def _int(value: Any) -> int | None:
    """An integer field (a bool counts, as msgpack keeps it apart but Python does not)."""
    return value if isinstance(value, int) else None


def _purpose(value: Any) -> str:
    """A wait's recorded purpose: one ledgerflow knows, or none (anything else is foreign)."""
    return value if value in WAIT_PURPOSES else ""


def _whole(value: Any) -> int | None:
    """A time in ms: an integer, or a finite float cut to one."""
    if isinstance(value, float) and math.isfinite(value):
        return int(value)
    return _int(value)


def _number(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value
    return None


def _attempt(data: Mapping[str, Any]) -> int | None:
    return _int(data.get("attempt"))


def _error(data: Mapping[str, Any]) -> ErrorInfo:
    return ErrorInfo.from_data(data.get("error"))


def _run_created(data: Mapping[str, Any]) -> RunCreated:
    parent = data.get("parent")
    ref = None
    if isinstance(parent, dict) and parent.get("run_id") and parent.get("corr"):
        ref = ParentRef(str(parent["run_id"]), str(parent["corr"]))
    args = data.get("args", [])
    kwargs = data.get("kwargs", {})
    return RunCreated(
        workflow=_text(data, "workflow") if data.get("workflow") is not None else None,
        args=list(args) if isinstance(args, (list, tuple)) else [],
        kwargs=dict(kwargs) if isinstance(kwargs, dict) else {},
        parent=ref,
        retention_ms=_int(data.get(RETENTION)),
        continued_from=_optional_text(data, CONTINUED_FROM),
        carried=_carried(data.get(CARRIED_TOKENS), data.get(CARRIED)),
        start_at_ms=_int(data.get(START_AT)),
        priority=max(0, min(_int(data.get(PRIORITY)) or 0, MAX_PRIORITY)),
        schedule=_schedule(data.get(SCHEDULE)),
    )


def _schedule(value: Any) -> ScheduleRef | None:
    """The schedule that started a run; None if absent or malformed (never an error)."""
    if not isinstance(value, dict):
        return None
    name, tick = value.get("name"), _int(value.get("tick"))
    if not isinstance(name, str) or not name or tick is None or isinstance(tick, bool):
        return None
    return ScheduleRef(name, tick)


def _carried(tokens: Any, payloads: Any) -> dict[str, list[Any]]:
    """Carried hook payloads by token; a malformed pair of lists carries nothing."""
    if not isinstance(tokens, (list, tuple)) or not isinstance(payloads, (list, tuple)):
        return {}
    if len(tokens) != len(payloads) or not all(isinstance(t, str) for t in tokens):
        return {}
    carried: dict[str, list[Any]] = {}
    for token, payload in zip(tokens, payloads, strict=True):
        carried.setdefault(token, []).append(payload)
    return carried


def _step_created(data: Mapping[str, Any]) -> StepCreated:
    name = _text(data, "name")
    args = data.get("args", b"")
    child = None
    if name.startswith(CHILD_PREFIX):
        child_args = data.get("child_args", [])
        child_kwargs = data.get("child_kwargs", {})
        child = ChildSpec(
            workflow=name[len(CHILD_PREFIX) :],
            run_id=str(data["child_run_id"]) if data.get("child_run_id") else "",
            args=list(child_args) if isinstance(child_args, (list, tuple)) else [],
            kwargs=dict(child_kwargs) if isinstance(child_kwargs, dict) else {},
        )
    return StepCreated(
        name=name,
        queue=_text(data, "queue", DEFAULT_STEP_QUEUE),
        args=args if isinstance(args, bytes) else None,
        call_fingerprint=_text(data, CALL_FINGERPRINT) if data.get(CALL_FINGERPRINT) else "",
        child=child,
    )


def _step_started(data: Mapping[str, Any]) -> StepStarted:
    return StepStarted(
        attempt=_attempt(data),
        worker=_text(data, "worker") if "worker" in data else None,
        timeout=_number(data.get("timeout")),
        heartbeat_timeout=_number(data.get("heartbeat_timeout")),
    )


def _step_retrying(data: Mapping[str, Any]) -> StepRetrying:
    due = data.get("due")
    delay = _whole(data.get("delay_ms"))
    return StepRetrying(
        error=_error(data),
        attempt=_attempt(data),
        due=_whole(due) if due is not None else None,
        delay_ms=delay or 0,
    )


def _hook_created(data: Mapping[str, Any]) -> HookCreated:
    conflict = data.get(HOOK_CONFLICT)
    return HookCreated(
        token=_text(data, "token"),
        metadata=data.get("metadata"),
        conflict=_text(conflict, "run") if isinstance(conflict, dict) else None,
    )


E = EventType
_DECODERS: dict[EventType, Callable[[Mapping[str, Any]], Record]] = {
    E.RUN_CREATED: _run_created,
    E.RUN_STARTED: lambda d: RunStarted(timeout_ms=_int(d.get(TIMEOUT))),
    E.RUN_COMPLETED: lambda d: RunCompleted(
        result=d.get("result"), continued_as=_optional_text(d, CONTINUED_AS)
    ),
    E.RUN_FAILED: lambda d: RunFailed(
        error=_error(d), by_scheduler=d.get(RECORDED_BY) == "scheduler"
    ),
    E.RUN_CANCELLED: lambda d: RunCancelled(reason=_text(d, "reason")),
    E.STEP_CREATED: _step_created,
    E.STEP_STARTED: _step_started,
    E.STEP_COMPLETED: lambda d: StepCompleted(attempt=_attempt(d), result=d.get("result")),
    E.STEP_FAILED: lambda d: StepFailed(error=_error(d), attempt=_attempt(d)),
    E.STEP_RETRYING: _step_retrying,
    E.WAIT_CREATED: lambda d: WaitCreated(
        due=_whole(d.get("due", 0)) or 0, purpose=_purpose(d.get(WAIT_PURPOSE))
    ),
    E.WAIT_COMPLETED: lambda d: WaitCompleted(),
    E.HOOK_CREATED: _hook_created,
    E.HOOK_RECEIVED: lambda d: HookReceived(attempt=_attempt(d), payload=d.get("payload")),
    E.HOOK_DISPOSED: lambda d: HookDisposed(reason=_text(d, "reason")),
}


def attempt_of(record: Record) -> int | None:
    """The attempt an outcome or a start records; None for events that carry none."""
    if isinstance(record, (StepStarted, StepCompleted, StepFailed, StepRetrying, HookReceived)):
        return record.attempt
    return None


def decode_record(event_type: EventType, data: Any) -> Record:
    """The typed record of one event's data; data that is not a map gets every default.

    Except a step_created's arguments: data that is not a map holds no call this
    code could send again, so a retry of that step fails instead of guessing.
    """
    if isinstance(data, dict):
        return _DECODERS[event_type](data)
    if event_type is EventType.STEP_CREATED:
        return StepCreated(args=None)
    return _DECODERS[event_type]({})
