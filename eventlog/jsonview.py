"""One JSON view of decoded event data, for everything that shows it.

Event data is decoded by the codec, so it may hold what JSON cannot: bytes,
datetimes, Decimals, UUIDs, sets and tuples, dataclasses, pydantic models and
registered classes, non-string dict keys, NaN, msgpack extension values, the
``Undecodable`` marker. ``view`` walks a value once and turns every part into a
JSON value; it never raises, and it is lossy on purpose (a Decimal and its
string look alike): nothing reads it back.

Two renderings share the walk, because their readers differ:

- ``EXPORT`` (``view``): history files, ``ledgerflow runs events --json`` and
  the CLI's JSON output. Compact and stable: bytes as hex, classes as
  ``{"__type__": "module.Class", **fields}``; the history file format depends on it.
- ``PAGE`` (``page_view``): the dashboard. Bounded (depth, bytes preview, integers
  a browser can hold exactly) and tagged with ``$type`` so the page never guesses
  whether a string was text or bytes.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import decimal
import enum
import json
import math
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import msgpack

from .blobref import BlobRef
from .codec import Undecodable

JsonValue = None | bool | int | float | str | list["JsonValue"] | dict[str, "JsonValue"]

MAX_DEPTH = 32
"""PAGE: deeper nesting is cut (with a marker), so a pathological payload cannot stall a page."""
BYTES_PREVIEW = 4096
"""PAGE: bytes beyond this are not sent; ``len`` still tells the real size."""
MAX_SAFE_INT = 2**53
"""PAGE: beyond this JavaScript numbers lose digits; a string keeps them."""


@dataclass(frozen=True, slots=True)
class Style:
    """How one rendering shows the parts JSON has no form for (the walk is shared)."""

    name: str
    max_depth: int | None
    big_ints_as_text: bool
    bytes: Callable[[bytes], JsonValue]
    timedelta: Callable[[dt.timedelta], JsonValue]
    undecodable: Callable[[Undecodable], JsonValue]
    key: Callable[[Any, Style], str]
    set_order: Callable[[JsonValue], str]
    extension_values: bool  # msgpack.ExtType as a tagged value (else: as the tuple it is)
    enum_values: bool  # an Enum as its value (else: as any other object)
    instance: Callable[[Any, int, Style], JsonValue]


def view(value: Any) -> JsonValue:
    """The EXPORT view of ``value``."""
    return _walk(value, 0, EXPORT)


def page_view(value: Any, *, depth: int = 0) -> JsonValue:
    """The PAGE view of ``value`` (the dashboard's)."""
    return _walk(value, depth, PAGE)


def _walk(value: Any, depth: int, style: Style) -> JsonValue:
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        if style.big_ints_as_text and abs(value) > MAX_SAFE_INT:
            return str(value)
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if style.max_depth is not None:
        if depth >= style.max_depth:
            return {"$type": "truncated", "repr": short_repr(value)}
        depth += 1
    if isinstance(value, Undecodable):
        return style.undecodable(value)
    if isinstance(value, BlobRef):  # a value stored out of line: shown, not fetched
        return {"$type": "blob", "sha256": value.digest, "size": value.size}
    if isinstance(value, (bytes, bytearray, memoryview)):
        return style.bytes(bytes(value))
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return style.timedelta(value)
    if isinstance(value, (decimal.Decimal, uuid.UUID)):
        return str(value)
    if style.extension_values and isinstance(value, msgpack.ExtType):  # before tuples
        return {"__ext__": value.code, "hex": value.data.hex()}
    if style.enum_values and isinstance(value, enum.Enum):
        return _walk(value.value, depth, style)
    if isinstance(value, Mapping):
        return {style.key(k, style): _walk(v, depth, style) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_walk(item, depth, style) for item in value]
    if isinstance(value, (set, frozenset)):
        return sorted((_walk(item, depth, style) for item in value), key=style.set_order)
    return style.instance(value, depth, style)


def short_repr(value: Any, limit: int = 200) -> str:
    """``repr`` cut to ``limit``; a broken ``__repr__`` is named, never raised."""
    try:
        text = repr(value)
    except Exception as exc:  # a broken __repr__ must not break the view; say so instead
        text = f"<unrepresentable {type(value).__qualname__}: {type(exc).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _dumps(value: JsonValue) -> str:
    return json.dumps(value, ensure_ascii=True, allow_nan=False)


# --- EXPORT ---------------------------------------------------------------------------------


def _export_key(key: Any, style: Style) -> str:
    return key if isinstance(key, str) else _dumps(_walk(key, 0, style))


def _export_instance(value: Any, depth: int, style: Style) -> JsonValue:
    """A dataclass, pydantic model or registered class: its type and fields; else its repr."""
    fields: dict[Any, Any] | None = None
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    elif callable(dump := getattr(value, "model_dump", None)):
        fields = dict(dump(mode="python"))
    elif callable(encode := getattr(value, "__lf_encode__", None)):
        fields = dict(encode())
    if fields is None:
        return repr(value)
    klass = type(value)
    state = {str(k): _walk(v, depth, style) for k, v in fields.items()}
    return {"__type__": f"{klass.__module__}.{klass.__qualname__}", **state}


EXPORT = Style(
    name="export",
    max_depth=None,
    big_ints_as_text=False,
    bytes=lambda raw: raw.hex(),
    timedelta=str,
    undecodable=repr,
    key=_export_key,
    set_order=_dumps,
    extension_values=True,
    enum_values=False,
    instance=_export_instance,
)


# --- PAGE -----------------------------------------------------------------------------------


def _page_bytes(raw: bytes) -> JsonValue:
    return {
        "$type": "bytes",
        "len": len(raw),
        "base64": base64.b64encode(raw[:BYTES_PREVIEW]).decode("ascii"),
        "text": raw[:BYTES_PREVIEW].decode("utf-8", errors="replace"),
    }


def _page_instance(value: Any, depth: int, style: Style) -> JsonValue:
    """Dataclasses, pydantic models and classes with a ``__dict__``: fields, tagged by type."""
    kind = type(value).__qualname__
    fields: Any
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    elif callable(getattr(value, "model_dump", None)):
        fields = value.model_dump()
    elif hasattr(value, "__dict__"):
        fields = vars(value)
    else:
        return {"$type": kind, "repr": short_repr(value)}
    return {"$type": kind, "fields": _walk(fields, depth, style)}


PAGE = Style(
    name="page",
    max_depth=MAX_DEPTH,
    big_ints_as_text=True,
    bytes=_page_bytes,
    timedelta=lambda delta: {"$type": "timedelta", "seconds": delta.total_seconds()},
    undecodable=lambda marker: {"$type": "undecodable", "error": marker.reason},
    key=lambda key, style: key if isinstance(key, str) else repr(key),
    set_order=repr,
    extension_values=False,
    enum_values=True,
    instance=_page_instance,
)


def json_depth(value: Any) -> int:
    """How deeply a parsed JSON value nests (a scalar is 1), without recursion.

    For the bounds on JSON read from outside (request bodies, a model API's replies):
    ``json.loads`` accepts any depth its stack allows, so the depth is checked after.
    """
    deepest, todo = 0, [(value, 1)]
    while todo:
        item, level = todo.pop()
        deepest = max(deepest, level)
        if isinstance(item, dict):
            todo += [(v, level + 1) for v in item.values()]
        elif isinstance(item, list):
            todo += [(v, level + 1) for v in item]
    return deepest
