"""Decoded payloads as JSON values the page can show.

Event data is already decoded by the codec, so it may hold what JSON cannot:
bytes, datetimes, Decimals, UUIDs, sets and tuples, dataclasses, pydantic
models and registered classes, non-string dict keys, NaN. Everything becomes a
JSON value here, once, so the API never fails on a payload and the browser
never has to guess. Bytes and objects keep their kind in a ``$type`` tag
rather than silently becoming strings that look like text.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import decimal
import enum
import math
import uuid
from collections.abc import Mapping
from typing import Any

from ledgerflow.eventlog.codec import Undecodable

JsonValue = None | bool | int | float | str | list["JsonValue"] | dict[str, "JsonValue"]

MAX_DEPTH = 32
"""Deeper nesting is cut (with a marker), so a pathological payload cannot stall a page."""

BYTES_PREVIEW = 4096
"""Bytes beyond this are not sent; ``len`` still tells the real size."""


def to_json(value: Any, *, depth: int = 0) -> JsonValue:
    """A JSON value for ``value``; never raises for any input."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        # Beyond 2**53 JavaScript numbers lose digits; a string keeps them.
        return value if abs(value) <= 2**53 else str(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if depth >= MAX_DEPTH:
        return {"$type": "truncated", "repr": _short_repr(value)}
    return _compound(value, depth + 1)


def _compound(value: Any, depth: int) -> JsonValue:
    if isinstance(value, Undecodable):  # the same marker as undecodable step arguments
        return {"$type": "undecodable", "error": value.reason}
    if isinstance(value, (bytes, bytearray, memoryview)):
        raw = bytes(value)
        return {
            "$type": "bytes",
            "len": len(raw),
            "base64": base64.b64encode(raw[:BYTES_PREVIEW]).decode("ascii"),
            "text": raw[:BYTES_PREVIEW].decode("utf-8", errors="replace"),
        }
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return {"$type": "timedelta", "seconds": value.total_seconds()}
    if isinstance(value, (decimal.Decimal, uuid.UUID)):
        return str(value)
    if isinstance(value, enum.Enum):
        return to_json(value.value, depth=depth)
    if isinstance(value, Mapping):
        return {_key(k): to_json(v, depth=depth) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(v, depth=depth) for v in value]
    if isinstance(value, (set, frozenset)):
        items = [to_json(v, depth=depth) for v in value]
        return sorted(items, key=repr)
    return _object(value, depth)


def _object(value: Any, depth: int) -> JsonValue:
    """Dataclasses, pydantic models and registered classes: their fields, tagged by type."""
    kind = type(value).__qualname__
    fields: Any
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    elif callable(getattr(value, "model_dump", None)):
        fields = value.model_dump()
    elif hasattr(value, "__dict__"):
        fields = vars(value)
    else:
        return {"$type": kind, "repr": _short_repr(value)}
    return {"$type": kind, "fields": to_json(fields, depth=depth)}


def _key(key: Any) -> str:
    return key if isinstance(key, str) else repr(key)


def _short_repr(value: Any, limit: int = 200) -> str:
    try:
        text = repr(value)
    except Exception as exc:  # a broken __repr__ must not break the page; say so instead
        text = f"<unrepresentable {type(value).__qualname__}: {type(exc).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."
