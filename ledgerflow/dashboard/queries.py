"""What the dashboard shows, read from the event store and the broker as plain JSON dicts.

Kept apart from the web layer so it can be tested without HTTP and reused by
anything else that wants the same views. Every value that came from a user
(arguments, results, errors, message bodies) goes through ``to_json`` here,
so the web layer only ever serializes JSON values.
"""

from __future__ import annotations

import re
from typing import Any, Final

from ledgerflow.broker import REASON_HEADER, Broker
from ledgerflow.broker.deadletters import DeadLetter, describe
from ledgerflow.eventlog import codec
from ledgerflow.eventlog.errors import SerializationError
from ledgerflow.eventlog.events import Event
from ledgerflow.eventlog.fold import ErrorInfo, RunState, StepState, WaitState, fold
from ledgerflow.eventlog.kinds import RunStatus
from ledgerflow.eventlog.records import StepCreated
from ledgerflow.eventlog.store import RunIndex, RunLog, RunSummary
from ledgerflow.worker.registry import StepDef

from .jsonsafe import JsonValue, to_json

RUN_STATUSES: Final = tuple(status.value for status in RunStatus)
"""The values of a run's status, as the fold and the runs index name them."""

MAX_LIMIT: Final = 1000


def run_row(summary: RunSummary) -> dict[str, JsonValue]:
    return {
        "run_id": summary.run_id,
        "workflow": summary.workflow,
        "status": summary.status,
        "created_ms": summary.created_ms,
        "updated_ms": summary.updated_ms,
        "events": summary.events,
    }


async def list_runs(
    store: RunIndex,
    *,
    status: str | None = None,
    workflow: str | None = None,
    limit: int = 100,
) -> list[dict[str, JsonValue]]:
    """The newest runs first, filtered by status and workflow (from the runs index)."""
    if status is not None and status not in RUN_STATUSES:
        raise ValueError(f"unknown status {status!r}; expected one of {', '.join(RUN_STATUSES)}")
    if not 1 <= limit <= MAX_LIMIT:
        raise ValueError(f"limit must be between 1 and {MAX_LIMIT}, got {limit}")
    runs = await store.list_runs(status=status, workflow=workflow or None, limit=limit)
    return [run_row(summary) for summary in runs]


async def run_detail(store: RunLog, run_id: str) -> dict[str, JsonValue] | None:
    """A run's state, its step and wait bars on one time axis, and every event; None if absent.

    Read as a read-only tool reads: objects of classes this process cannot import
    are shown by their fields, data that cannot be decoded at all as an
    ``undecodable`` marker naming why, and a log whose very structure cannot be
    read as an unreadable run carrying the error, never as a failed request.
    """
    try:
        with codec.inspecting():
            events = await store.read(run_id)
    except SerializationError as exc:
        return _unreadable(run_id, exc)
    if not events:
        return None
    state = fold(run_id, events)
    end = max(event.ts for event in events)
    origin = events[0].ts
    return {
        "run": _run(state),
        "origin_ms": origin,
        "end_ms": end,
        "bars": list[JsonValue](_bars(state, end)),
        "events": list[JsonValue](_event(event) for event in events),
    }


def _unreadable(run_id: str, error: SerializationError) -> dict[str, JsonValue]:
    state = RunState(run_id=run_id, status="unreadable")
    state.error = ErrorInfo(type=type(error).__name__, message=str(error))
    return {"run": _run(state), "origin_ms": 0, "end_ms": 0, "bars": [], "events": []}


def _run(state: RunState) -> dict[str, JsonValue]:
    return {
        "run_id": state.run_id,
        "workflow": state.workflow,
        "status": state.status,
        "args": to_json(state.args),
        "kwargs": to_json(state.kwargs),
        "result": to_json(state.result),
        "error": _error(state.error),
        "cancel_reason": state.cancel_reason,
        "created_ms": state.created_ts,
        "started_ms": state.started_ts,
        "finished_ms": state.finished_ts,
        "event_count": state.event_count,
    }


def _bars(state: RunState, end: int) -> list[dict[str, JsonValue]]:
    """One bar per step and per durable sleep, in creation order.

    A step's bar runs from its (latest) start, or from its creation if it never
    started, to its outcome; one still open runs to the newest event, flagged
    ``open``. Each bar has its own row, so steps that ran in parallel show as
    bars overlapping on the shared axis.
    """
    bars = [_step_bar(step, end) for step in state.steps.values()]
    bars += [_wait_bar(wait, end) for wait in state.waits.values()]
    bars.sort(key=lambda bar: _position(str(bar["id"])))
    return bars


def _step_bar(step: StepState, end: int) -> dict[str, JsonValue]:
    start = step.started_ts if step.started_ts is not None else step.created_ts
    return {
        "kind": "step",
        "id": step.id,
        "name": step.name,
        "queue": step.queue,
        "status": step.status,
        "attempt": step.attempt,
        "created_ms": step.created_ts,
        "start_ms": start,
        "end_ms": step.finished_ts if step.finished_ts is not None else end,
        "open": step.finished_ts is None,
        "args": _decoded(step.args),
        "result": to_json(step.result),
        "error": _error(step.error),
        "child_run_id": step.child_run_id,
    }


def _wait_bar(wait: WaitState, end: int) -> dict[str, JsonValue]:
    return {
        "kind": "wait",
        "id": wait.id,
        "name": {"start": "start time", "deadline": "deadline"}.get(wait.purpose, "sleep"),
        "status": wait.status,
        "created_ms": wait.created_ts,
        "start_ms": wait.created_ts,
        "end_ms": wait.finished_ts if wait.finished_ts is not None else max(end, wait.created_ts),
        "due_ms": wait.due,
        "open": wait.finished_ts is None,
    }


_POSITION = re.compile(r"(\D*)(\d+)$")


def _position(corr: str) -> tuple[str, int, str]:
    """``s2`` before ``s10``: correlation ids sort by their sequence number."""
    match = _POSITION.match(corr)
    return (match.group(1), int(match.group(2)), corr) if match else (corr, 0, corr)


def _event(event: Event) -> dict[str, JsonValue]:
    data = event.data
    # A step's arguments are stored encoded (only the worker decodes them): show them.
    # A record with arguments was decoded from a map, so the data can be copied as one.
    record = event.record
    if isinstance(record, StepCreated) and record.args:
        data = {**data, "args": _decoded(record.args)}
    return {**event.envelope(), "data": to_json(data)}


def _error(error: ErrorInfo | None) -> JsonValue:
    if error is None:
        return None
    return {"type": error.type, "message": error.message, "traceback": error.traceback}


def _decoded(payload: bytes) -> JsonValue:
    """Encoded step arguments; a class this process does not know is shown, not hidden."""
    if not payload:
        return None
    try:
        args, kwargs = StepDef.decode_args(payload)
    except SerializationError as exc:
        return {"$type": "undecodable", "error": str(exc), "len": len(payload)}
    return {"args": to_json(args), "kwargs": to_json(kwargs)}


async def dead_letters(broker: Broker, *, limit: int = 100) -> dict[str, JsonValue]:
    """The oldest dead messages, described as ``ledgerflow dlq list`` describes them.

    Read through ``Broker.hold_dead_letters`` and ``deadletters.describe``, the
    CLI's own path, so both show the same id, reason and origin for a message
    (ours or one RabbitMQ dead-lettered itself) and the queue keeps its order.
    Nothing is acked: every message goes back when the block ends. The depth is
    the one the read saw: a ``queue_depth`` call beside it would miss messages
    held by this or another reader, or returned but not yet applied (a nack has
    no reply in AMQP).
    """
    if not 1 <= limit <= MAX_LIMIT:
        raise ValueError(f"limit must be between 1 and {MAX_LIMIT}, got {limit}")
    queue = broker.names.dead_queue
    async with broker.hold_dead_letters(limit) as held:
        rows = [_dead(describe(delivery), delivery.message_id) for delivery in held]
        depth = held.depth
    return {
        "queue": queue,
        "depth": depth,
        "messages": list[JsonValue](rows),
    }


def _dead(letter: DeadLetter, message_id: str | None) -> dict[str, JsonValue]:
    """One row: ``id`` is what ``ledgerflow dlq show`` takes, ``message_id`` the AMQP one."""
    # Without our reason header it was RabbitMQ that dead-lettered it (delivery limit,
    # rejected): say so, the fix differs from a message our code refused.
    by_rabbitmq = bool(letter.reason) and REASON_HEADER not in letter.headers
    return {
        "id": letter.id,
        "message_id": message_id,
        "reason": f"{letter.reason} (by RabbitMQ)" if by_rabbitmq else letter.reason or None,
        "queue": letter.queue or None,
        "dead_at_ms": letter.dead_at_ms,
        "published_ms": letter.published_ms,
        "kind": letter.kind,
        "run_id": letter.run_id or None,
        "step": letter.step or None,
        "headers": to_json(letter.headers),
        "size": len(letter.body),
        "decoded": _message(letter),
    }


def _message(letter: DeadLetter) -> JsonValue:
    """The step message or activation in the body, or why it cannot be read plus its bytes."""
    if letter.message is None:
        return {"$type": "malformed", "error": letter.decode_error, "body": to_json(letter.body)}
    fields = {name: to_json(value) for name, value in _fields(letter.message).items()}
    return {"$type": type(letter.message).__name__, **fields}


def _fields(decoded: Any) -> dict[str, Any]:
    fields = {name: getattr(decoded, name) for name in decoded.__dataclass_fields__}
    if isinstance(fields.get("args"), bytes):
        fields["args"] = _decoded(fields["args"])
    return fields
