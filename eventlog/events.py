"""The event model: what a run's log may contain.

Every stream entry carries ``type``, ``corr`` (the step/wait/hook id, empty for
run events), ``data`` (msgpack), ``ts`` (ms since epoch, from the Redis clock so
every host agrees) and ``v`` (schema version, so old logs stay readable).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from . import codec
from .timers import Timer

SCHEMA_VERSION = 1


class EventType(enum.StrEnum):
    RUN_CREATED = "run_created"
    RUN_STARTED = "run_started"
    RUN_COMPLETED = "run_completed"
    RUN_FAILED = "run_failed"
    RUN_CANCELLED = "run_cancelled"
    STEP_CREATED = "step_created"
    STEP_STARTED = "step_started"
    STEP_COMPLETED = "step_completed"
    STEP_FAILED = "step_failed"
    STEP_RETRYING = "step_retrying"
    WAIT_CREATED = "wait_created"
    WAIT_COMPLETED = "wait_completed"
    HOOK_CREATED = "hook_created"
    HOOK_RECEIVED = "hook_received"
    HOOK_DISPOSED = "hook_disposed"

    @property
    def kind(self) -> str:
        """The entity this event belongs to: run, step, wait or hook."""
        return self.value.split("_", 1)[0]


RUN_TERMINAL = frozenset({EventType.RUN_COMPLETED, EventType.RUN_FAILED, EventType.RUN_CANCELLED})
STEP_OUTCOMES = frozenset(
    {EventType.STEP_COMPLETED, EventType.STEP_FAILED, EventType.STEP_RETRYING}
)


@dataclass(frozen=True, slots=True)
class Event:
    """One recorded entry of a run's log."""

    id: str
    type: EventType
    corr: str
    data: Any
    ts: int
    v: int = SCHEMA_VERSION

    @property
    def attempt(self) -> int | None:
        if isinstance(self.data, dict):
            attempt = self.data.get("attempt")
            return attempt if isinstance(attempt, int) else None
        return None


@dataclass(frozen=True, slots=True)
class NewEvent:
    """An event about to be appended; its data is already encoded.

    Encoding happens when the event is built, so an unserializable value fails
    in the caller's code, before anything is written or sent.
    """

    type: EventType
    corr: str
    payload: bytes
    attempt: int | None = None
    workflow: str = ""
    token: str = ""
    # step_created: the call's fingerprint to keep; step_started: the one to check
    # against it (eventlog.integrity.call_fingerprint).
    fingerprint: str = ""
    # A timer-index entry added in the same atomic append, due `delay_ms` after
    # the append (by the Redis clock) or at `due_ms`.
    timer: Timer | None = None
    delay_ms: int | None = None
    due_ms: int | None = None

    @property
    def timer_due(self) -> str:
        if self.timer is None:
            return ""
        if self.due_ms is not None:
            return str(int(self.due_ms))
        return f"+{int(self.delay_ms or 0)}"

    @classmethod
    def of(
        cls,
        type: EventType,
        corr: str = "",
        data: Any = None,
        *,
        attempt: int | None = None,
        workflow: str = "",
        token: str = "",
        fingerprint: str = "",
        timer: Timer | None = None,
        delay_ms: int | None = None,
        due_ms: int | None = None,
        what: str | None = None,
        max_size: int | None = codec.DEFAULT_MAX_PAYLOAD,
    ) -> NewEvent:
        if data is None:
            data = {}
        if attempt is not None and isinstance(data, dict) and "attempt" not in data:
            data = {**data, "attempt": attempt}
        payload = codec.encode(data, what=what or f"data of {type.value}", max_size=max_size)
        return cls(
            type=type,
            corr=corr,
            payload=payload,
            attempt=attempt,
            workflow=workflow,
            token=token,
            fingerprint=fingerprint,
            timer=timer,
            delay_ms=delay_ms,
            due_ms=due_ms,
        )


@dataclass(frozen=True, slots=True)
class AppendResult:
    """What one appended event became: a new entry, or a harmless duplicate."""

    event_id: str | None
    duplicate: bool

    @property
    def appended(self) -> bool:
        return not self.duplicate


def id_order(entry_id: str) -> tuple[int, int]:
    """A stream entry id as a sortable pair: ids compare as (ms, sequence), never as text."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def decode_entry(entry_id: str, fields: dict[str, Any]) -> Event:
    """Build an Event from a stream entry's raw fields (bytes or str)."""

    fields = {(k.decode() if isinstance(k, bytes) else k): v for k, v in fields.items()}

    def text(name: str) -> str:
        value = fields.get(name, b"")
        return value.decode() if isinstance(value, bytes) else str(value)

    raw = fields.get("data", b"")
    data = codec.decode(raw if isinstance(raw, bytes) else raw.encode(), what=f"event {entry_id}")
    return Event(
        id=entry_id,
        type=EventType(text("type")),
        corr=text("corr"),
        data=data,
        ts=int(text("ts") or 0),
        v=int(text("v") or SCHEMA_VERSION),
    )
