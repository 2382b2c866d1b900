"""Property-based tests: the codec round-trips every supported type, and no decoder fails
on any input except with its documented error.

Bounded (a modest ``max_examples``, no deadline) so that ``make test`` stays fast;
raise ``LEDGERFLOW_HYPOTHESIS_EXAMPLES`` for a longer hunt.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import decimal
import io
import json
import math
import os
from collections.abc import Callable
from typing import Any

import msgpack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ledgerflow.broker.messages import SCHEMA_VERSION, decode_message
from ledgerflow.eventlog import codec
from ledgerflow.eventlog.errors import MalformedMessageError, SerializationError
from ledgerflow.eventlog.events import decode_entry
from ledgerflow.scheduler.history import HistoryError, load_history
from ledgerflow.worker.registry import StepDef

EXAMPLES = int(os.environ.get("LEDGERFLOW_HYPOTHESIS_EXAMPLES", "120"))
BOUNDED = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@codec.serializable(name="tests.eventlog.properties.Pair")
@dataclasses.dataclass(frozen=True)
class Pair:
    left: Any
    right: Any


# --- values the codec carries ---------------------------------------------------------------

offsets = st.integers(min_value=-23 * 60 - 59, max_value=23 * 60 + 59).map(
    lambda minutes: dt.timezone(dt.timedelta(minutes=minutes))
)
hashable_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.binary(max_size=20),
    st.datetimes(),
    st.datetimes(timezones=offsets),
    st.dates(),
    st.times(),
    st.times(timezones=offsets),
    st.timedeltas(),
    st.decimals(allow_nan=False, allow_infinity=True),
    st.uuids(),
)
scalars = st.one_of(hashable_scalars, st.decimals(allow_nan=True))
hashables = st.recursive(
    hashable_scalars,
    lambda inner: st.one_of(
        st.tuples(inner, inner),
        st.frozensets(inner, max_size=3),
        st.builds(Pair, inner, inner),
    ),
    max_leaves=8,
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.lists(inner, max_size=4).map(tuple),
        st.dictionaries(st.one_of(st.text(max_size=8), hashables), inner, max_size=4),
        st.sets(hashables, max_size=4),
        st.frozensets(hashables, max_size=4),
        st.builds(Pair, inner, inner),
    ),
    max_leaves=25,
)


def same(decoded: Any, original: Any) -> bool:
    """Equal and of the same types all the way down; NaN equals NaN here."""
    if type(decoded) is not type(original):
        return False
    if isinstance(original, float) and math.isnan(original):
        return math.isnan(decoded)
    if isinstance(original, decimal.Decimal) and original.is_nan():
        return decoded.is_nan() and str(decoded) == str(original)
    if isinstance(original, (list, tuple)):
        return len(decoded) == len(original) and all(map(same, decoded, original))
    if isinstance(original, dict):
        return codec.encode(decoded, max_size=None) == codec.encode(original, max_size=None)
    if isinstance(original, Pair):
        return same(decoded.left, original.left) and same(decoded.right, original.right)
    if isinstance(original, (set, frozenset)):
        # Equal sets encode to equal bytes (items ordered by their encoding when needed).
        return codec.encode(decoded, max_size=None) == codec.encode(original, max_size=None)
    if isinstance(original, (dt.datetime, dt.time)):
        return decoded == original and decoded.utcoffset() == original.utcoffset()
    return bool(decoded == original)


@BOUNDED
@given(values)
def test_every_supported_value_round_trips(value: Any) -> None:
    data = codec.encode(value, max_size=None)
    assert same(codec.decode(data, max_size=None), value)


@BOUNDED
@given(values)
def test_encoding_is_deterministic_and_stable_through_a_round_trip(value: Any) -> None:
    data = codec.encode(value, max_size=None)
    assert codec.encode(codec.decode(data, max_size=None), max_size=None) == data


# --- every decoder on hostile input ----------------------------------------------------------


def decodes_or_refuses(call: Callable[[], object], error: type[Exception]) -> None:
    """Anything but ``error`` propagates and fails the test; ``error`` must say what, briefly."""
    try:
        call()
    except error as exc:
        message = str(exc)
        assert message
        assert len(message) < 2000


ext_codes = st.one_of(st.integers(min_value=0, max_value=12), st.integers(-128, 127))
raw_structures = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**63), max_value=2**64 - 1),
        st.floats(),
        st.text(max_size=10),
        st.binary(max_size=10),
        st.builds(msgpack.ExtType, st.integers(1, 12), st.binary(max_size=12)),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(
            st.one_of(st.text(max_size=5), st.integers(-1000, 1000)), inner, max_size=4
        ),
        # An extension value holding another structure: how nesting attacks are built.
        st.builds(
            lambda code, body: msgpack.ExtType(code, msgpack.packb(body, use_bin_type=True)),
            st.integers(1, 12),
            inner,
        ),
    ),
    max_leaves=30,
)
packed_structures = raw_structures.map(lambda value: msgpack.packb(value, use_bin_type=True))


def _deep(layers: list[int]) -> bytes:
    """Nesting far past the limit (what once segfaulted): lists, maps and extension values."""
    blob = msgpack.packb(1)
    for layer in layers:
        if layer == 0:
            blob = b"\x91" + blob
        elif layer == 1:
            blob = b"\x81\xa1k" + blob
        else:
            blob = msgpack.packb(msgpack.ExtType(layer, b"\x91" + blob))
    return blob


deep_bytes = st.lists(st.sampled_from([0, 1, 5, 6, 7]), min_size=50, max_size=400).map(_deep)
hostile_bytes = st.one_of(st.binary(max_size=200), packed_structures, deep_bytes)


@BOUNDED
@given(hostile_bytes)
def test_codec_decode_raises_only_serialization_errors(data: bytes) -> None:
    decodes_or_refuses(lambda: codec.decode(data), SerializationError)


@BOUNDED
@given(hostile_bytes)
def test_step_arguments_decode_raises_only_serialization_errors(data: bytes) -> None:
    try:
        args, kwargs = StepDef.decode_args(data)
    except SerializationError:
        return
    assert isinstance(args, list)
    assert all(isinstance(key, str) for key in kwargs)


message_fields = st.dictionaries(
    st.sampled_from(
        ["v", "k", "run_id", "step_id", "step_name", "attempt", "args", "queue", "wf", "steps"]
    ),
    st.one_of(
        raw_structures,
        st.just(SCHEMA_VERSION),
        st.sampled_from(["step", "steps", "activation"]),
        st.lists(st.lists(raw_structures, min_size=4, max_size=4), max_size=3),
    ),
)


@BOUNDED
@given(st.one_of(hostile_bytes, message_fields.map(msgpack.packb)))
def test_queue_messages_decode_or_raise_malformed_message_error(body: bytes) -> None:
    decodes_or_refuses(lambda: decode_message(body), MalformedMessageError)


stream_fields = st.dictionaries(
    st.one_of(st.sampled_from([b"type", b"corr", b"data", b"ts", b"v"]), st.binary(max_size=4)),
    st.one_of(
        st.binary(max_size=50),
        packed_structures,
        st.sampled_from([b"run_created", b"step_completed", b"1", b"-3", b"\xff"]),
        st.text(max_size=10),
        st.integers(),
    ),
)


@BOUNDED
@given(st.text(max_size=20), stream_fields)
def test_stream_entries_decode_or_raise_serialization_error(entry_id: str, fields: Any) -> None:
    decodes_or_refuses(lambda: decode_entry(entry_id, fields), SerializationError)
    with codec.inspecting():
        decodes_or_refuses(lambda: decode_entry(entry_id, fields), SerializationError)


history_lines = st.one_of(
    st.text(max_size=80),
    st.fixed_dictionaries(
        {
            "id": st.text(max_size=8),
            "type": st.sampled_from(["run_created", "step_completed", "nope"]),
            "corr": st.text(max_size=3),
            "ts": st.integers(),
            "msgpack": st.one_of(
                st.text(max_size=20),
                packed_structures.map(lambda b: base64.b64encode(b).decode()),
            ),
        }
    ).map(json.dumps),
    st.just('{"ledgerflow_history": 1, "run_id": "r", "events": 1}'),
    st.integers(1, 3000).map(lambda n: "[" * n),
)


@BOUNDED
@given(st.lists(history_lines, max_size=5))
def test_history_files_load_or_raise_history_errors(lines: list[str]) -> None:
    decodes_or_refuses(lambda: load_history(io.StringIO("\n".join(lines))), HistoryError)
