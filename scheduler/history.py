"""Saved run histories, and replaying them against today's workflow code.

A history file lets a user keep a real run's log next to their tests and find
out, before deploying, whether the workflow code still does what the log
recorded: the same check the scheduler makes when it replays a live run after a
deploy, but in a test instead of in production.

File format (JSON Lines, UTF-8), one JSON object per line:

* line 1, the header: ``{"ledgerflow_history": 1, "run_id": ..., "workflow": ...,
  "events": N}``. ``run_id`` matters: ``lf.uuid4()`` and ``lf.random()`` are
  seeded by it, so replaying under another id would compute other values.
  ``events`` lets loading notice a truncated file. The header is optional when
  loading (``replay`` then needs ``run_id=``).
* one line per value the run stored out of line (``eventlog.blobs``), after the
  header: ``{"blob": sha256 hex, "size": N, "base64": ...}``: the blob's bytes, so
  the file is self-contained. Loading verifies each against its digest; replay
  hands the values to the code where the events carry their references.
* one line per event, in log order: ``{"id", "type", "corr", "ts", "v", "data",
  "msgpack"}``. ``msgpack`` is the base64 of the event data encoded with the
  same codec the event log uses, and is the only part loading reads, so a
  history round-trips exactly (Decimal, UUID, datetime, tuples, sets, bytes,
  dataclasses). ``data`` is a JSON view of the same data for humans reading a
  diff (bytes as hex; Decimal, UUID, dates as strings; objects with their type
  under ``"__type__"``); loading ignores it.

Every event type is carried the same way: nothing here knows what a step, a
wait or a hook is, so new event kinds need no change to the format.

A history may be gzip-compressed (``runs archive`` writes ``<run>.jsonl.gz``):
loading recognises gzip by its magic bytes, whatever the file is called, and
writing to a path ending in ``.gz`` compresses; the lines inside are the same.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import hashlib
import io
import json
import os
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import IO, Any

from ledgerflow.eventlog import codec
from ledgerflow.eventlog.blobref import DIGEST_RE, BlobRef
from ledgerflow.eventlog.blobs import decode_blob, has_refs, resolve_sync
from ledgerflow.eventlog.errors import (
    HookTokenConflictError,
    LedgerflowError,
    ReplayDivergenceError,
    SerializationError,
    UnknownTypeError,
    canonical_error_name,
)
from ledgerflow.eventlog.events import RUN_TERMINAL, SCHEMA_VERSION, Event, EventType
from ledgerflow.eventlog.jsonview import view
from ledgerflow.eventlog.records import ErrorInfo, RunCompleted, RunCreated, RunFailed
from ledgerflow.worker.outcome import type_name

from . import sandbox
from .registry import WorkflowDef, WorkflowFunction, workflows
from .replay import (
    ChildCommand,
    Command,
    Completed,
    Continued,
    DisposeHookCommand,
    Failed,
    HookCommand,
    Outcome,
    StepCommand,
    WaitCommand,
    WorkflowInstance,
)
from .values import DELIVERED

FORMAT_VERSION = 1
HEADER_KEY = "ledgerflow_history"
GZIP_MAGIC = b"\x1f\x8b"

# Run failures the scheduler records on its own, not as the workflow's outcome: the
# code never got to see them, so the log cannot be held to what the code does next.
# Logs written before hook conflicts were recorded per hook failed the run with this
# type; newer scheduler-recorded failures say so in their data (RECORDED_BY).
_RECORDED_BY_SCHEDULER = frozenset({type_name(HookTokenConflictError)})

Source = str | os.PathLike[str]
WorkflowRef = WorkflowFunction[Any, Any] | WorkflowDef | str


class HistoryError(LedgerflowError):
    """A history cannot be used: unreadable, empty, not starting with run_created, no run id."""


class HistoryFormatError(HistoryError):
    """A history file is malformed; the message names the file and the line."""

    def __init__(self, message: str, *, line: int | None = None) -> None:
        super().__init__(message)
        self.line = line


class History(list[Event]):
    """A run's events, plus what the file's header said about the run they belong to."""

    def __init__(
        self,
        events: Iterable[Event] = (),
        *,
        run_id: str | None = None,
        workflow: str | None = None,
        blobs: dict[str, bytes] | None = None,
    ) -> None:
        super().__init__(events)
        self.run_id = run_id
        self.workflow = workflow
        # Offloaded values by sha256 (hex): the bytes the events' references name.
        self.blobs: dict[str, bytes] = dict(blobs or {})


# --- writing --------------------------------------------------------------------------------


def dump_history(
    events: Iterable[Event], fp: IO[str] | Source, *, run_id: str | None = None
) -> int:
    """Write a run's events as a history file (or to a text stream); returns the event count.

    ``run_id`` defaults to the one a loaded :class:`History` carries. Every line is
    built before anything is written, so an event that cannot be encoded leaves no
    half-written file behind. A path ending in ``.gz`` is written gzip-compressed.
    """
    events = list(events) if not isinstance(events, History) else events
    text = format_history(events, run_id=run_id)
    if isinstance(fp, (str, os.PathLike)):
        if os.fspath(fp).endswith(".gz"):
            with open(fp, "wb") as raw:
                raw.write(compress_history(text))
        else:
            with open(fp, "w", encoding="utf-8") as out:
                out.write(text)
    else:
        fp.write(text)
    return len(events)


def format_history(events: Iterable[Event], *, run_id: str | None = None) -> str:
    """The whole history file as text: the header line, then one line per event.

    What ``dump_history`` writes and ``runs archive`` compresses; raises
    HistoryError without ``run_id`` (unless ``events`` is a History carrying one).
    """
    blobs = events.blobs if isinstance(events, History) else {}
    if run_id is None and isinstance(events, History):
        run_id = events.run_id
    events = list(events)
    if not run_id:
        raise HistoryError(
            "dump_history() needs run_id=: lf.uuid4() and lf.random() are seeded by it, "
            "so a replay under another id would compute other values"
        )
    workflow = _created_workflow(events)
    header = {
        HEADER_KEY: FORMAT_VERSION,
        "run_id": run_id,
        "workflow": workflow,
        "events": len(events),
    }
    lines = [_dumps(header)]
    lines.extend(_dumps(_blob_line(digest, blobs[digest])) for digest in sorted(blobs))
    lines.extend(_dumps(_event_line(event)) for event in events)
    return "".join(line + "\n" for line in lines)


def compress_history(text: str) -> bytes:
    """A history's text gzip-compressed, with no timestamp in the gzip header.

    The same run always compresses to the same bytes, so archiving a run twice
    (after an interrupted removal) writes an identical file.
    """
    return gzip.compress(text.encode("utf-8"), mtime=0)


def _blob_line(digest: str, data: bytes) -> dict[str, Any]:
    return {"blob": digest, "size": len(data), "base64": base64.b64encode(data).decode("ascii")}


def _event_line(event: Event) -> dict[str, Any]:
    blob = codec.encode(
        event.data,
        what=f"data of event {event.id}",
        max_size=None,
        envelope=codec.ENVELOPE_DEPTH,
    )
    return {
        **event.envelope(),
        "data": json_view(event.data),
        "msgpack": base64.b64encode(blob).decode("ascii"),
    }


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=True, allow_nan=False)


def json_view(value: Any) -> Any:
    """A JSON-safe rendering of event data, for people reading a history or its diff.

    The one JSON view of event data (``eventlog.jsonview.view``); lossy on
    purpose (a Decimal and its string look alike): loading never reads it.
    """
    return view(value)


# --- reading --------------------------------------------------------------------------------


def load_history(source: IO[str] | Source) -> History:
    """Read a history file (a path, or an open text stream); a gzip-compressed file too.

    Classes in the data are rebuilt only if registered (``@lf.serializable``), or
    dataclasses and pydantic models of an allowed, imported module, as everywhere
    in ledgerflow: ``replay`` and ``ledgerflow replay`` allow the workflow's module
    before reading; call ``lf.allow_modules`` first to load a file on its own.
    """
    if isinstance(source, (str, os.PathLike)):
        name = os.fspath(source)
        try:
            with open(source, "rb") as raw:
                data = raw.read()
        except OSError as exc:
            raise HistoryError(f"cannot read history file {name}: {exc.strerror or exc}") from exc
        return loads_history(data, name=name)
    return _load(source, str(getattr(source, "name", "<stream>")))


def loads_history(data: bytes, *, name: str = "<bytes>") -> History:
    """A history from the bytes of a file (plain or gzip-compressed), e.g. from an archive sink.

    gzip is recognised by its magic bytes, not by a name, so a renamed archive
    still loads; a truncated or corrupt one is a HistoryFormatError.
    """
    if data[:2] == GZIP_MAGIC:
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as exc:
            raise HistoryFormatError(
                f"{name}: not a readable gzip file (truncated or corrupt?): {exc}"
            ) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise HistoryFormatError(f"{name}: not UTF-8 text ({exc})") from None
    return _load(io.StringIO(text), name)


def _load(fp: IO[str], name: str) -> History:
    history = History()
    declared: int | None = None
    seen_line = False
    for number, raw in enumerate(fp, 1):
        if not raw.strip():
            continue
        where = f"{name}, line {number}"
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise HistoryFormatError(f"{where}: not valid JSON ({exc})", line=number) from None
        except RecursionError:  # json's parser recurses: a line of ten thousand '['
            raise HistoryFormatError(f"{where}: JSON nested too deep", line=number) from None
        if not isinstance(obj, dict):
            raise HistoryFormatError(f"{where}: expected a JSON object", line=number)
        if HEADER_KEY in obj:
            if seen_line:
                raise HistoryFormatError(
                    f"{where}: a history header may only be the first line", line=number
                )
            declared = _read_header(obj, history, where, number)
        elif "blob" in obj:
            digest, data = _read_blob(obj, where, number)
            history.blobs[digest] = data
        else:
            history.append(_read_event(obj, where, number))
        seen_line = True
    if not history:
        raise HistoryFormatError(f"{name} holds no events")
    if declared is not None and declared != len(history):
        raise HistoryFormatError(
            f"{name}: the header says {declared} events but the file holds {len(history)} "
            "(truncated or edited?)"
        )
    return history


def _read_header(obj: dict[str, Any], history: History, where: str, number: int) -> int | None:
    version = obj[HEADER_KEY]
    if version != FORMAT_VERSION:
        raise HistoryFormatError(
            f"{where}: history format version {version!r} is not supported (this ledgerflow "
            f"reads version {FORMAT_VERSION}; was it written by a newer one?)",
            line=number,
        )
    run_id, workflow, count = obj.get("run_id"), obj.get("workflow"), obj.get("events")
    if not isinstance(run_id, str) or not run_id:
        raise HistoryFormatError(f"{where}: the header has no run_id", line=number)
    if workflow is not None and not isinstance(workflow, str):
        raise HistoryFormatError(f"{where}: the header's workflow is not a string", line=number)
    if count is not None and (not isinstance(count, int) or isinstance(count, bool)):
        raise HistoryFormatError(f"{where}: the header's events is not a number", line=number)
    history.run_id, history.workflow = run_id, workflow
    return count


def _read_blob(obj: dict[str, Any], where: str, number: int) -> tuple[str, bytes]:
    """A stored value's line: its bytes, verified against the digest that names them."""
    digest, encoded = obj.get("blob"), obj.get("base64")
    if not isinstance(digest, str) or not DIGEST_RE.match(digest):
        raise HistoryFormatError(f"{where}: a blob line's 'blob' must be a sha256", line=number)
    if not isinstance(encoded, str):
        raise HistoryFormatError(f"{where}: the blob line has no 'base64'", line=number)
    try:
        data = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise HistoryFormatError(f"{where}: 'base64' is not base64 ({exc})", line=number) from None
    if hashlib.sha256(data).hexdigest() != digest:
        raise HistoryFormatError(
            f"{where}: blob sha256:{digest} does not match its bytes (corrupted or edited?)",
            line=number,
        )
    return digest, data


def _with_values(events: list[Event], blobs: dict[str, bytes], run_id: str) -> list[Event]:
    """The events with the values replay delivers taken from the history's blobs."""

    def lookup(ref: BlobRef) -> Any:
        data = blobs.get(ref.digest)
        if data is None:
            raise HistoryError(
                f"the history of run {run_id!r} refers to a value stored out of line "
                f"(sha256:{ref.digest}, {ref.size} bytes) that it does not hold: write it "
                "with `ledgerflow runs export` or Client.history(), which include them"
            )
        try:
            return decode_blob(run_id, ref, data)
        except SerializationError as exc:
            raise HistoryError(f"the history of run {run_id!r}: {exc}") from exc

    out = []
    for event in events:
        # The run's own result too: a finished history is held to it.
        if (event.type in DELIVERED or event.type is EventType.RUN_COMPLETED) and has_refs(
            event.data
        ):
            data = resolve_sync(event.data, lookup)
            event = Event(
                id=event.id, type=event.type, corr=event.corr, data=data, ts=event.ts, v=event.v
            )
        out.append(event)
    return out


def _read_event(obj: dict[str, Any], where: str, number: int) -> Event:
    def field(key: str, kind: type) -> Any:
        if key not in obj:
            raise HistoryFormatError(f"{where}: the event has no {key!r}", line=number)
        value = obj[key]
        if not isinstance(value, kind) or isinstance(value, bool):
            raise HistoryFormatError(
                f"{where}: the event's {key!r} must be a {kind.__name__}, not {value!r}",
                line=number,
            )
        return value

    event_id, type_text, corr = field("id", str), field("type", str), field("corr", str)
    ts, encoded = field("ts", int), field("msgpack", str)
    version = field("v", int) if "v" in obj else SCHEMA_VERSION
    try:
        event_type = EventType(type_text)
    except ValueError:
        raise HistoryFormatError(
            f"{where}: unknown event type {type_text!r} (written by a newer ledgerflow?)",
            line=number,
        ) from None
    try:
        blob = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise HistoryFormatError(f"{where}: 'msgpack' is not base64 ({exc})", line=number) from None
    try:
        data = codec.decode(
            blob, what=f"the data of event {event_id}", max_size=codec.MAX_EVENT_BYTES
        )
    except UnknownTypeError as exc:
        raise HistoryFormatError(
            f"{where}: {exc} (register the class with @lf.serializable, or import its module "
            "and allow it with lf.allow_modules before loading)",
            line=number,
        ) from exc
    except SerializationError as exc:
        raise HistoryFormatError(f"{where}: {exc}", line=number) from exc
    return Event(id=event_id, type=event_type, corr=corr, data=data, ts=ts, v=version)


# --- replaying ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReplayResult:
    """What a consistent replay found: how far it got and how the code ends the run."""

    run_id: str
    workflow: str
    events: int
    outcome: Outcome | None
    finished: bool
    # Positions the code would ask for next that the (unfinished) log does not record yet.
    pending: tuple[str, ...] = ()

    def summary(self) -> str:
        """One line for the command line and test output."""
        head = f"run {self.run_id} ({self.workflow}): {self.events} events replayed, consistent"
        if isinstance(self.outcome, Completed):
            return f"{head}; completed with {_short(self.outcome.result)}"
        if isinstance(self.outcome, Continued):
            return f"{head}; continued as new run {self.outcome.run_id}"
        if isinstance(self.outcome, Failed):
            error = self.outcome.error
            return f"{head}; failed with {type(error).__name__}: {_short_text(str(error))}"
        if self.pending:
            return f"{head}; still running, next {', '.join(self.pending)}"
        return f"{head}; still running"


def replay(
    history: Iterable[Event] | Source,
    workflow: WorkflowRef,
    *,
    run_id: str | None = None,
) -> ReplayResult:
    """Replay a saved history against today's code; raise ReplayDivergenceError if they disagree.

    ``history`` is a list of events (a :class:`History` from :func:`load_history`,
    or ``await client.events(run_id)`` with ``run_id=``) or a history file's path.
    ``workflow`` is the code to hold it to: a ``@workflow`` function, its
    definition, or a registered name; it need not be the one that recorded the run,
    so an edited copy can be checked against an old log.

    The error names the position: ``s<n>`` for a step, sleep or hook call the code
    now makes differently (or no longer makes, or makes where a finished log has
    nothing), ``start`` when the recorded arguments no longer fit, ``end`` when the
    code would end the run otherwise than the log says. A history of a run still
    going is consistent as long as what it recorded matches.
    """
    definition = _definition(workflow)
    # The workflow's own module, like the APP the CLI is given: its dataclasses and
    # pydantic models in the recorded data may be rebuilt (before a file is read).
    codec.allow_modules(definition.fn.__module__)
    if isinstance(history, (str, os.PathLike)):
        history = load_history(history)
    events = list(history)
    if not run_id and isinstance(history, History):
        run_id = history.run_id
    if not run_id:
        raise HistoryError(
            "replay() needs run_id= for a plain list of events: lf.uuid4() and lf.random() "
            "are seeded by it (a history loaded from a file carries it)"
        )
    if not events or events[0].type is not EventType.RUN_CREATED:
        raise HistoryError(f"the history of run {run_id!r} does not start with run_created")
    events = _with_values(events, history.blobs if isinstance(history, History) else {}, run_id)
    created = events[0].record
    args = list(created.args) if isinstance(created, RunCreated) else []
    kwargs = dict(created.kwargs) if isinstance(created, RunCreated) else {}
    _check_arguments(run_id, definition, args, kwargs)

    carried = created.carried if isinstance(created, RunCreated) else {}
    instance = WorkflowInstance(run_id, definition, args, kwargs, carried=carried)
    try:
        with sandbox.installed():
            instance.feed(events)
            decision = instance.decide()
    finally:
        instance.close()
    outcome = _as_recorded(decision.outcome, definition.name)
    if isinstance(outcome, Failed) and isinstance(outcome.error, ReplayDivergenceError):
        raise outcome.error
    terminal = next((e for e in reversed(events) if e.type in RUN_TERMINAL), None)
    if terminal is not None and _held_to_outcome(terminal):
        if decision.commands:
            first = min(decision.commands, key=lambda c: _position_key(c.corr))
            raise ReplayDivergenceError(
                run_id,
                first.corr,
                f"nothing there (the run ended with {terminal.type.value})",
                describe_command(first),
            )
        _check_outcome(run_id, terminal, outcome)
    return ReplayResult(
        run_id=run_id,
        workflow=definition.name,
        events=len(events),
        outcome=outcome,
        finished=terminal is not None,
        pending=tuple(f"{c.corr} {describe_command(c)}" for c in decision.commands),
    )


def _definition(workflow: WorkflowRef) -> WorkflowDef:
    if isinstance(workflow, WorkflowFunction):
        return workflow.definition
    if isinstance(workflow, WorkflowDef):
        return workflow
    return workflows.get(workflow)


def _check_arguments(
    run_id: str, definition: WorkflowDef, args: list[Any], kwargs: dict[str, Any]
) -> None:
    """Signature changes show up as a divergence at ``start``, not a TypeError mid-replay."""
    if definition.signature is None:
        return
    try:
        definition.signature.bind(*args, **kwargs)
    except TypeError as exc:
        call = ", ".join([*map(_short, args), *(f"{k}={_short(v)}" for k, v in kwargs.items())])
        raise ReplayDivergenceError(
            run_id, "start", f"a start with arguments ({call})", f"not accept them ({exc})"
        ) from None


def _held_to_outcome(terminal: Event) -> bool:
    """Whether the log's end says what the code must do; a cancel or scheduler failure does not.

    A cancel lands between activations, so the code may well ask for more than the
    log recorded before it; a failure the scheduler recorded on its own likewise.
    """
    if terminal.type is EventType.RUN_CANCELLED:
        return False
    if isinstance(terminal.record, RunFailed):
        if terminal.record.by_scheduler:
            return False
        return canonical_error_name(terminal.record.error.type) not in _RECORDED_BY_SCHEDULER
    return True


def _check_outcome(run_id: str, terminal: Event, outcome: Outcome | None) -> None:
    """The run must end as the log says: the same result, or the same type of error."""
    record = terminal.record
    if isinstance(record, RunCompleted) and record.continued_as is not None:
        if isinstance(outcome, Continued) and outcome.run_id == record.continued_as:
            return
        recorded = f"run_completed continued as new run {record.continued_as}"
    elif isinstance(record, RunCompleted):
        recorded_result = record.result
        if isinstance(outcome, Completed) and _same_result(recorded_result, outcome.result):
            return
        recorded = f"run_completed with result {_short(recorded_result)}"
    else:
        error = record.error if isinstance(record, RunFailed) else ErrorInfo.from_data(None)
        error_type = error.type
        recorded_type = canonical_error_name(error_type)
        if isinstance(outcome, Failed) and type_name(type(outcome.error)) == recorded_type:
            return
        recorded = f"run_failed with {error_type}"
    raise ReplayDivergenceError(run_id, "end", recorded, _describe_outcome(outcome))


def _as_recorded(outcome: Outcome | None, workflow: str) -> Outcome | None:
    """A result the log cannot hold ends the run failed, as the scheduler would record it."""
    if isinstance(outcome, Completed):
        try:
            outcome.recorded_as(workflow)
        except SerializationError as exc:
            return Failed(exc)
    return outcome


def _same_result(recorded: Any, replayed: Any) -> bool:
    """Equal as the log would hold them: compared after a codec round trip, else by bytes."""
    normalized = codec.decode(codec.encode(replayed, max_size=None), max_size=None)
    try:
        if bool(normalized == recorded):
            return True
    except Exception:  # an __eq__ that refuses to compare (arrays, say): fall back to bytes
        pass
    return codec.encode(normalized, max_size=None) == codec.encode(recorded, max_size=None)


def _describe_outcome(outcome: Outcome | None) -> str:
    if isinstance(outcome, Completed):
        return f"complete with result {_short(outcome.result)}"
    if isinstance(outcome, Continued):
        return f"continue as new run {outcome.run_id}"
    if isinstance(outcome, Failed):
        error = outcome.error
        return f"fail with {type_name(type(error))}: {_short_text(str(error))}"
    return "not finish (it is still waiting for something the log does not record)"


def describe_command(command: Command) -> str:
    """What a command asks for, worded like the divergence messages of the replay itself."""
    if isinstance(command, StepCommand):
        return f"step {command.step.name!r}"
    if isinstance(command, ChildCommand):
        return f"child workflow {command.workflow!r}"
    if isinstance(command, WaitCommand):
        return "a sleep"
    if isinstance(command, HookCommand):
        return "a hook"
    if isinstance(command, DisposeHookCommand):
        return "a hook's disposal"
    return type(command).__name__


def _position_key(corr: str) -> tuple[int, str]:
    digits = corr[1:]
    return (int(digits), corr) if digits.isdigit() else (1 << 62, corr)


def _created_workflow(events: list[Event]) -> str | None:
    if events and isinstance(events[0].record, RunCreated):
        return events[0].record.workflow
    return None


def _short(value: Any, limit: int = 200) -> str:
    return _short_text(repr(value), limit)


def _short_text(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
