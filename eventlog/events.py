"""The event model: what a run's log may contain.

Every stream entry carries ``type``, ``corr`` (the step/wait/hook id, empty for
run events), ``data`` (msgpack), ``ts`` (ms since epoch, from the Redis clock so
every host agrees) and ``v`` (schema version, so old logs stay readable).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from . import codec
from .blobs import Blob, BlobStore, offload_paths, offload_threshold
from .errors import SerializationError
from .kinds import (
    AWAITS_SCHEDULER,
    RUN_TERMINAL,
    SCHEDULER_WRITES,
    STEP_OUTCOMES,
    EventType,
)
from .records import Record, RunCreated, attempt_of, decode_record
from .timers import Timer

__all__ = [
    "AWAITS_SCHEDULER",
    "RUN_TERMINAL",
    "SCHEDULER_WRITES",
    "SCHEMA_VERSION",
    "STEP_OUTCOMES",
    "AppendResult",
    "Event",
    "EventType",
    "NewEvent",
    "decode_entry",
    "id_before",
    "id_order",
    "put_event_blobs",
]

SCHEMA_VERSION = 1


@dataclass(frozen=True, slots=True)
class Event:
    """One recorded entry of a run's log.

    ``data`` is the decoded payload as stored (what exports and JSON views show);
    ``record`` is the same data as its type's typed record, decoded once, on first
    use (a waiter that skips a run's events never pays for them), so readers never
    inspect ``data`` themselves.
    """

    id: str
    type: EventType
    corr: str
    data: Any
    ts: int
    v: int = SCHEMA_VERSION
    _record: Record | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def record(self) -> Record:
        record = self._record
        if record is None:
            # Decoding never raises and depends on type and data alone: caching is safe.
            record = decode_record(self.type, self.data)
            object.__setattr__(self, "_record", record)
        return record

    @property
    def attempt(self) -> int | None:
        return attempt_of(self.record)

    def envelope(self) -> dict[str, str | int]:
        """Every field but ``data``, as JSON values: each JSON view of an event (export,
        ``runs events --json``, the dashboard) starts from these and renders data its way."""
        return {
            "id": self.id,
            "type": self.type.value,
            "corr": self.corr,
            "ts": self.ts,
            "v": self.v,
        }


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
    # Values of this event stored out of line (eventlog.blobs): written by the append,
    # before the entry that references them.
    blobs: tuple[Blob, ...] = ()
    # run_created: the run's own retention (ms), kept in its status hash; None for
    # the namespace default.
    retention_ms: int | None = None

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
        retention_ms: int | None = None,
        what: str | None = None,
        max_size: int | None = codec.DEFAULT_MAX_PAYLOAD,
        envelope: int = 1,
        offload: tuple[tuple[Any, ...], ...] = (),
        blobs: tuple[Blob, ...] = (),
    ) -> NewEvent:
        """Build and encode an event.

        ``max_size`` limits the encoded data (None: only the ceiling every stored
        event is read back with, ``codec.MAX_EVENT_BYTES``). ``envelope`` is how
        many levels the data puts around the user's value it carries (1 for
        ``{"result": value}``, 2 for ``{"args": [...]}``), so that value may nest
        ``codec.MAX_DEPTH`` deep and errors name its own depth.

        ``offload`` names where the data holds user values (paths as in
        ``blobs.offload_paths``, e.g. ``(("result",),)``): when the encoded data is
        over the offload threshold, those values over it go out of line (up to
        ``blobs.max_value_bytes()``) and the entry carries references; what stays
        inline is still held to ``max_size``. ``blobs`` are ones the caller made
        already (step arguments).
        """
        if data is None:
            data = {}
        if attempt is not None and isinstance(data, dict) and "attempt" not in data:
            data = {**data, "attempt": attempt}
        limit = codec.MAX_EVENT_BYTES if max_size is None else min(max_size, codec.MAX_EVENT_BYTES)
        what = what or f"data of {type.value}"
        threshold = offload_threshold() if offload else 0
        payload = codec.encode(
            data, what=what, max_size=None if threshold else limit, envelope=envelope
        )
        if threshold and len(payload) > threshold:
            data, made = offload_paths(data, offload, what=what, threshold=threshold)
            if made:
                blobs = (*blobs, *made)
                payload = codec.encode(data, what=what, max_size=limit, envelope=envelope)
        if len(payload) > limit:
            # Offloading left it too large (or was off): the limit as before.
            codec.encode(data, what=what, max_size=limit, envelope=envelope)
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
            blobs=blobs,
            retention_ms=retention_ms,
        )


def run_created(record: RunCreated, *, what: str, offload_args: bool = False) -> NewEvent:
    """The run_created that records ``record``: one way for a producer's start, a child's
    start and a continuation, so the workflow name and retention the append script keeps
    (its key and retention slot) are always the record's own. ``offload_args``: large
    arguments go out of line (a producer's start; children and continuations keep theirs
    inline)."""
    return NewEvent.of(
        EventType.RUN_CREATED,
        data=record.as_data(),
        workflow=record.workflow or "",
        retention_ms=record.retention_ms,
        what=what,
        envelope=2,  # {"args": [...]} (and a continuation's {"hook_payloads": [...]})
        offload=(("args", "*"), ("kwargs", "*")) if offload_args else (),
    )


@dataclass(frozen=True, slots=True)
class AppendResult:
    """What one appended event became: a new entry, or a harmless duplicate."""

    event_id: str | None
    duplicate: bool

    @property
    def appended(self) -> bool:
        return not self.duplicate


async def put_event_blobs(store: BlobStore, run_id: str, events: Sequence[NewEvent]) -> None:
    """Store a batch's offloaded values before the batch itself (both stores' append).

    A run that has ended gets none (its append is a duplicate or refused anyway); a run
    that does not exist raises RunNotFoundError, as its append would.
    """
    blobs = [blob for event in events for blob in event.blobs]
    if blobs:
        creating = any(event.type is EventType.RUN_CREATED for event in events)
        await store.put_blobs(run_id, blobs, creating=creating)


def id_order(entry_id: str) -> tuple[int, int]:
    """A stream entry id as a sortable pair: ids compare as (ms, sequence), never as text."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


MAX_SEQUENCE = 2**64 - 1


def id_before(entry_id: str) -> str:
    """The greatest stream entry id below ``entry_id``: reading after it starts *at* it.

    So a reader can check that an entry it saw is still in the log (a Redis failover
    can lose a log's newest entries) in the same read that fetches what follows.
    """
    ms, seq = id_order(entry_id)
    if seq > 0:
        return f"{ms}-{seq - 1}"
    return f"{ms - 1}-{MAX_SEQUENCE}" if ms > 0 else "0-0"


def decode_entry(entry_id: str, fields: Any) -> Event:
    """Build an Event from a stream entry's raw fields (bytes or str).

    Anything wrong with the entry is a ``SerializationError`` naming it: stream
    entries are input like any other (an XADD needs no ledgerflow code). Inside
    ``codec.inspecting()`` data that cannot be decoded becomes an
    ``codec.Undecodable`` marker instead, so a read-only tool still shows the
    rest of the run; the entry's type must still be one this version knows.
    """
    where = f"event {codec.brief(str(entry_id), 80)}"
    try:
        fields = {_text(k): v for k, v in fields.items()}
        event_type = EventType(_text(fields.get("type", b"")))
        corr = _text(fields.get("corr", b""))
        ts = int(_text(fields.get("ts", b"")) or 0)
        version = int(_text(fields.get("v", b"")) or SCHEMA_VERSION)
    except (AttributeError, TypeError, ValueError) as exc:  # UnicodeDecodeError is a ValueError
        raise SerializationError(
            f"{where} is malformed: {type(exc).__name__}: {codec.brief(str(exc))}"
        ) from None
    raw = fields.get("data", b"")
    try:
        data = codec.decode(
            raw.encode() if isinstance(raw, str) else raw,
            what=where,
            max_size=codec.MAX_EVENT_BYTES,
        )
    except SerializationError as exc:
        if not codec.is_inspecting():
            raise
        data = codec.Undecodable(str(exc))
    return Event(id=entry_id, type=event_type, corr=corr, data=data, ts=ts, v=version)


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, str):
        return value
    raise TypeError(f"a stream field must be text, not {type(value).__name__}")
