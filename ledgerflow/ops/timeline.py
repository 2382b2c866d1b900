"""A run's timeline as rows a terminal (or a JSON consumer) can show.

Steps that run at the same time (a fan-out through ``asyncio.gather``) are put
in lanes: a step takes the lowest free lane when it starts and frees it when it
completes, fails or goes to retry, in log order. ``render`` draws the lanes as a
gutter (``*`` the row's own step, ``|`` another step running meanwhile), so
parallel steps read as such at a glance and a sequential run is one column.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ledgerflow.eventlog import records as r
from ledgerflow.eventlog.codec import Undecodable
from ledgerflow.eventlog.events import Event, EventType

_DETAIL_LIMIT = 60


@dataclass(frozen=True)
class TimelineRow:
    offset_ms: int
    event: str
    entity: str
    attempt: int | None
    duration_ms: int | None
    detail: str
    lane: int | None = None
    """The step's lane while it runs (None for other events and a step not running)."""
    running: tuple[int, ...] = ()
    """The lanes busy at this event, the row's own included: its concurrency is the length."""


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= _DETAIL_LIMIT else text[: _DETAIL_LIMIT - 3] + "..."


def timeline(events: Sequence[Event]) -> list[TimelineRow]:
    if not events:
        return []
    origin = events[0].ts
    names: dict[str, str] = {}
    began: dict[str, int] = {}
    rows: list[TimelineRow] = []
    lanes: dict[str, int] = {}  # running step -> its lane
    for event in events:
        record = event.record
        entity = "run" if event.type.kind == "run" else event.corr
        duration: int | None = None
        detail = ""
        if isinstance(event.data, Undecodable):  # only read-only tools see these
            detail = f"undecodable: {event.data.reason}"
        elif isinstance(record, r.RunCreated):
            detail = f"{record.workflow}({_short(record.args)[1:-1]})"
        elif isinstance(record, r.StepCreated):
            names[event.corr] = record.name
            began[event.corr] = event.ts
            detail = names[event.corr]
        elif isinstance(record, r.StepStarted):
            began[event.corr] = event.ts
            detail = f"{names.get(event.corr, '')} on {_or(record.worker, '?')}"
        elif isinstance(record, (r.StepCompleted, r.RunCompleted)):
            detail = f"-> {_short(record.result)}"
        elif isinstance(record, (r.StepFailed, r.RunFailed, r.StepRetrying)):
            error = record.error
            detail = f"{error.type}: {error.message}"[:_DETAIL_LIMIT]
        elif isinstance(record, r.RunCancelled):
            detail = record.reason
        if event.type in (EventType.STEP_COMPLETED, EventType.STEP_FAILED) and event.corr in began:
            duration = event.ts - began[event.corr]
        if event.type.kind == "run" and event.type is not EventType.RUN_CREATED:
            duration = event.ts - origin
        lane = _lane(event, lanes)
        busy = tuple(sorted(lanes.values()))
        if lane is not None and lane not in busy:  # the row's step just finished
            busy = tuple(sorted((*busy, lane)))
        rows.append(
            TimelineRow(
                offset_ms=event.ts - origin,
                event=event.type.value,
                entity=entity if event.type.kind != "step" else f"{entity} {names.get(entity, '')}",
                attempt=event.attempt,
                duration_ms=duration,
                detail=detail,
                lane=lane,
                running=busy,
            )
        )
    return rows


def _or(value: str | None, default: str) -> str:
    return default if value is None else value


def _lane(event: Event, lanes: dict[str, int]) -> int | None:
    """Take the lowest free lane at step_started, give it back at the step's outcome."""
    if event.type is EventType.STEP_STARTED:
        if event.corr not in lanes:  # a repeated start (redelivery) keeps its lane
            taken = set(lanes.values())
            lanes[event.corr] = next(i for i in range(len(taken) + 1) if i not in taken)
        return lanes[event.corr]
    if event.type in (EventType.STEP_COMPLETED, EventType.STEP_FAILED, EventType.STEP_RETRYING):
        return lanes.pop(event.corr, None)
    return None


_MAX_LANES = 8


def _gutter(row: TimelineRow, width: int) -> str:
    marks = [" "] * width
    for lane in row.running:
        if lane < width:
            marks[lane] = "|"
    if row.lane is not None and row.lane < width:
        marks[row.lane] = "*"
    if width == _MAX_LANES and any(lane >= width for lane in row.running):
        marks[-1] = "+"
    return "".join(marks)


def render(rows: Sequence[TimelineRow]) -> str:
    """A table: event number (as ``runs state --at`` takes it), offset, lanes, event, ..."""
    width = min(_MAX_LANES, max((max(r.running) + 1 for r in rows if r.running), default=1))
    par = "par".ljust(width)
    header = (
        f"{'#':>4} {'+ms':>8}  {par} {'event':<15} {'entity':<22} {'att':>3} {'took':>7}  detail"
    )
    lines = [header, "-" * len(header)]
    for number, row in enumerate(rows, start=1):
        took = f"{row.duration_ms}ms" if row.duration_ms is not None else ""
        attempt = str(row.attempt) if row.attempt is not None else ""
        lines.append(
            f"{number:>4} {row.offset_ms:>8}  {_gutter(row, width)} {row.event:<15} "
            f"{row.entity[:22]:<22} {attempt:>3} {took:>7}  {row.detail}"
        )
    if width > 1:
        lines.append("par: * this row's step, | another step running at the same time")
    return "\n".join(lines)
