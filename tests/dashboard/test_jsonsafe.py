"""Decoded payloads become JSON values the browser can parse, whatever they hold."""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import json
import math
import uuid
from typing import Any

import pytest

from ledgerflow.dashboard.jsonsafe import BYTES_PREVIEW, MAX_DEPTH, to_json


@dataclasses.dataclass
class Order:
    id: int
    placed: dt.datetime
    tags: frozenset[str]


class Opaque:
    __slots__ = ()

    def __repr__(self) -> str:
        return "<Opaque>"


class BrokenRepr:
    __slots__ = ()

    def __repr__(self) -> str:
        raise RuntimeError("no")


def _strict(value: Any) -> Any:
    """What the browser's JSON.parse would get (which refuses NaN and Infinity)."""
    return json.loads(json.dumps(to_json(value), allow_nan=False))


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("<script>", "<script>"),
        (3, 3),
        (2**64, str(2**64)),
        (1.5, 1.5),
        (math.nan, "nan"),
        (-math.inf, "-inf"),
        (dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC), "2026-01-02T03:04:05+00:00"),
        (dt.date(2026, 1, 2), "2026-01-02"),
        (decimal.Decimal("12.30"), "12.30"),
        (uuid.UUID(int=1), "00000000-0000-0000-0000-000000000001"),
        ((1, (2, 3)), [1, [2, 3]]),
        ({3, 1, 2}, [1, 2, 3]),
        ({1: "a", (2, 3): "b"}, {"1": "a", "(2, 3)": "b"}),
        (dt.timedelta(seconds=90), {"$type": "timedelta", "seconds": 90.0}),
    ],
)
def test_values(value: Any, expected: Any) -> None:
    assert _strict(value) == expected


def test_bytes_keep_their_kind_and_size() -> None:
    raw = b"\x00\xffhi" + b"x" * (BYTES_PREVIEW + 10)
    out = _strict(raw)
    assert out["$type"] == "bytes"
    assert out["len"] == len(raw)
    assert out["text"].startswith("\x00\ufffdhi")  # invalid UTF-8 is replaced, not fatal
    assert len(out["text"]) == BYTES_PREVIEW


def test_objects_show_their_fields_by_type() -> None:
    order = Order(7, dt.datetime(2026, 1, 1, tzinfo=dt.UTC), frozenset({"b", "a"}))
    assert _strict(order) == {
        "$type": "Order",
        "fields": {"id": 7, "placed": "2026-01-01T00:00:00+00:00", "tags": ["a", "b"]},
    }
    assert _strict(Opaque()) == {"$type": "Opaque", "repr": "<Opaque>"}
    broken = _strict(BrokenRepr())
    assert broken["$type"] == "BrokenRepr"
    assert "unrepresentable" in broken["repr"]


def test_deep_nesting_is_cut_not_fatal() -> None:
    deep: Any = "bottom"
    for _ in range(MAX_DEPTH + 10):
        deep = [deep]
    out = _strict(deep)
    for _ in range(MAX_DEPTH):
        out = out[0]
    assert out["$type"] == "truncated"
