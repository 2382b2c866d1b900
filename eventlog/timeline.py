"""A run's timeline as rows a terminal (or a JSON consumer) can show."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .events import Event, EventType

_DETAIL_LIMIT = 60


@dataclass(frozen=True)
class TimelineRow:
    offset_ms: int
    event: str
    entity: str
    attempt: int | None
    duration_ms: int | None
    detail: str


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
    for event in events:
        data = event.data if isinstance(event.data, dict) else {}
        entity = "run" if event.type.kind == "run" else event.corr
        duration: int | None = None
        detail = ""
        if event.type is EventType.RUN_CREATED:
            detail = f"{data.get('workflow')}({_short(data.get('args', []))[1:-1]})"
        elif event.type is EventType.STEP_CREATED:
            names[event.corr] = str(data.get("name", ""))
            began[event.corr] = event.ts
            detail = names[event.corr]
        elif event.type is EventType.STEP_STARTED:
            began[event.corr] = event.ts
            detail = f"{names.get(event.corr, '')} on {data.get('worker', '?')}"
        elif event.type in (EventType.STEP_COMPLETED, EventType.RUN_COMPLETED):
            detail = f"-> {_short(data.get('result'))}"
        elif event.type in (EventType.STEP_FAILED, EventType.RUN_FAILED, EventType.STEP_RETRYING):
            error = data.get("error") or {}
            detail = f"{error.get('type', '')}: {error.get('message', '')}"[:_DETAIL_LIMIT]
        elif event.type is EventType.RUN_CANCELLED:
            detail = str(data.get("reason", ""))
        if event.type in (EventType.STEP_COMPLETED, EventType.STEP_FAILED) and event.corr in began:
            duration = event.ts - began[event.corr]
        if event.type.kind == "run" and event.type is not EventType.RUN_CREATED:
            duration = event.ts - origin
        rows.append(
            TimelineRow(
                offset_ms=event.ts - origin,
                event=event.type.value,
                entity=entity if event.type.kind != "step" else f"{entity} {names.get(entity, '')}",
                attempt=event.attempt,
                duration_ms=duration,
                detail=detail,
            )
        )
    return rows


def render(rows: Sequence[TimelineRow]) -> str:
    header = f"{'+ms':>8}  {'event':<15} {'entity':<22} {'att':>3} {'took':>7}  detail"
    lines = [header, "-" * len(header)]
    for row in rows:
        took = f"{row.duration_ms}ms" if row.duration_ms is not None else ""
        attempt = str(row.attempt) if row.attempt is not None else ""
        lines.append(
            f"{row.offset_ms:>8}  {row.event:<15} {row.entity[:22]:<22} {attempt:>3} {took:>7}  "
            f"{row.detail}"
        )
    return "\n".join(lines)
