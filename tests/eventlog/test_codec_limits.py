"""Hostile payloads: nesting, size, rich-value budget and class resolution limits of the codec.

Payloads that would once have crashed the process (nested extension values
segfaulted msgpack's C unpacker at about 200 levels) are decoded in a
subprocess, so a regression fails one test instead of killing the whole run.
"""

from __future__ import annotations

import dataclasses
import decimal
import subprocess
import sys
import textwrap
import tracemalloc
import uuid
from pathlib import Path
from typing import Any

import msgpack
import pytest
from ledgerflow.eventlog import codec
from ledgerflow.eventlog.codec import MAX_DECODE_DEPTH, MAX_DEPTH, MAX_EXT_VALUES, decode, encode
from ledgerflow.eventlog.codec import Unregistered as ReExported
from ledgerflow.eventlog.errors import (
    NestingTooDeepError,
    PayloadTooLargeError,
    SerializationError,
    UnknownTypeError,
)
from ledgerflow.eventlog.events import decode_entry

ROOT = Path(__file__).resolve().parents[2]


# --- building payloads around the encoder --------------------------------------------------


def nested(depth: int, wrap: Any) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = wrap(value)
    return value


def raw_tuples(depth: int) -> bytes:
    """``depth`` tuples inside one another, built by hand: what a hostile producer sends."""
    blob = msgpack.packb(1)
    for _ in range(depth):
        blob = msgpack.packb(msgpack.ExtType(5, b"\x91" + blob))
    return blob


def raw_objects(depth: int, type_name: str) -> bytes:
    blob = msgpack.packb(1)
    for _ in range(depth):
        inner = b"\x92" + msgpack.packb(type_name) + b"\x81" + msgpack.packb("x") + blob
        blob = msgpack.packb(msgpack.ExtType(8, inner))
    return blob


def decode_in_subprocess(blob: bytes, *, max_size: int | None = None) -> str:
    """Decode in a fresh interpreter; returns what it printed (a segfault fails the test)."""
    script = textwrap.dedent(
        f"""
        import sys
        from ledgerflow.eventlog import codec
        from ledgerflow.eventlog.errors import SerializationError
        try:
            codec.decode(sys.stdin.buffer.read(), what="the payload", max_size={max_size!r})
        except SerializationError as exc:
            print(type(exc).__name__, exc)
        else:
            print("decoded")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        input=blob,
        capture_output=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, f"decoding crashed (rc {done.returncode}): {done.stderr!r}"
    return done.stdout.decode()


CONTAINERS = {
    "list": lambda v: [v],
    "dict": lambda v: {"k": v},
    "tuple": lambda v: (v,),
    "frozenset": lambda v: frozenset([v]),
    "dataclass": lambda v: codec.Unregistered("a", v),
}


# --- nesting on encode -------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["list", "dict", "tuple", "frozenset"])
def test_a_value_at_the_depth_limit_round_trips(kind: str) -> None:
    value = nested(MAX_DEPTH, CONTAINERS[kind])
    assert decode(encode(value)) == value


def test_keys_objects_and_sets_count_as_levels() -> None:
    key = nested(MAX_DEPTH - 1, lambda v: (v,))
    assert decode(encode({key: 1})) == {key: 1}
    with pytest.raises(NestingTooDeepError, match="nested 65 deep"):
        encode({(key,): 1})
    # A dataclass is one level (its fields), like a map.
    with pytest.raises(NestingTooDeepError, match="nested 65 deep"):
        encode(nested(MAX_DEPTH + 1, CONTAINERS["dataclass"]))


@pytest.mark.parametrize("kind", ["list", "dict", "tuple", "frozenset"])
@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 251])
def test_encoding_past_the_limit_names_the_argument_and_the_depth(kind: str, depth: int) -> None:
    with pytest.raises(NestingTooDeepError) as info:
        encode(nested(depth, CONTAINERS[kind]), what="argument 'x' of step 'f'")
    assert str(info.value).startswith(
        f"argument 'x' of step 'f' is nested {depth} deep, over the limit of {MAX_DEPTH}"
    )


def test_envelopes_do_not_count_against_the_users_value() -> None:
    value = nested(MAX_DEPTH, lambda v: [v])
    data = encode({"args": [value]}, what="arguments of workflow 'w'", envelope=2)
    assert decode(data) == {"args": [value]}
    with pytest.raises(NestingTooDeepError, match="is nested 65 deep"):
        encode({"args": [[value]]}, what="arguments of workflow 'w'", envelope=2)


def test_very_deep_plain_lists_and_cycles_are_refused_without_recursion() -> None:
    # Far past Python's recursion limit: the walk naming the problem must be iterative.
    with pytest.raises(NestingTooDeepError, match="nested 20000 deep"):
        encode(nested(20_000, lambda v: [v]), what="result of step 'f'")
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(NestingTooDeepError, match="contains itself"):
        encode({"a": loop}, what="result of step 'f'")


def test_a_shared_subtree_is_measured_once() -> None:
    # 2**60 paths, 60 distinct lists: msgpack would pack every path; the check must not.
    value: Any = []
    for _ in range(60):
        value = [value, value]
    assert codec.value_depth(value) == 61
    assert codec.find_unserializable(value) is None


# --- nesting on decode (bytes built around the encoder) ------------------------------------


def test_hand_built_nesting_at_the_decode_limit_decodes() -> None:
    assert decode_in_subprocess(raw_tuples(MAX_DECODE_DEPTH)).strip() == "decoded"


@pytest.mark.parametrize("depth", [MAX_DECODE_DEPTH + 1, 250, 2000])
def test_hand_built_nested_tuples_are_refused_not_a_crash(depth: int) -> None:
    out = decode_in_subprocess(raw_tuples(depth))
    assert out.startswith("NestingTooDeepError the payload could not be decoded: nested")


def test_hand_built_nested_objects_are_refused_before_any_class_is_looked_up() -> None:
    out = decode_in_subprocess(raw_objects(300, "nowhere.Thing"))
    assert out.startswith("NestingTooDeepError")


def test_plain_nesting_past_the_limit_is_refused() -> None:
    with pytest.raises(NestingTooDeepError, match="nested 1000 deep"):
        decode(b"\x91" * 1000 + b"\x00")
    with pytest.raises(NestingTooDeepError, match="msgpack's own limit"):
        decode(b"\x91" * 5000 + b"\x00")


def test_plain_and_extension_nesting_count_together() -> None:
    # 40 tuples, each holding 40 lists: 1,640 levels, though neither kind alone is deep.
    blob = msgpack.packb(1)
    for _ in range(40):
        blob = msgpack.packb(msgpack.ExtType(5, b"\x91" * 41 + blob))
    with pytest.raises(NestingTooDeepError):
        decode(blob)


# --- sizes -----------------------------------------------------------------------------------


def test_decode_refuses_input_over_its_limit_before_unpacking() -> None:
    blob = encode(b"x" * 2000, max_size=None)
    assert decode(blob, max_size=len(blob)) == b"x" * 2000
    with pytest.raises(PayloadTooLargeError, match=f"{len(blob)} bytes, over the 2000-byte"):
        decode(blob, max_size=2000)
    two_mib = msgpack.packb(b"\0" * (2 * 1024 * 1024))
    with pytest.raises(PayloadTooLargeError):
        decode(two_mib)  # the default limit is the default payload limit


@pytest.mark.parametrize(
    "bomb",
    [
        b"\xdd\x80\x00\x00\x00" + b"\x00" * 5,  # an array claiming 2**31 elements
        b"\xdf\x80\x00\x00\x00" + b"\x00" * 5,  # a map claiming 2**31 pairs
        b"\xc6\x7f\xff\xff\xff" + b"\x00" * 5,  # bytes claiming 2 GiB
        b"\xdb\x7f\xff\xff\xff" + b"\x00" * 5,  # a string claiming 2 GiB
        b"\xc9\x7f\xff\xff\xff\x05" + b"\x00" * 5,  # an extension value claiming 2 GiB
    ],
    ids=["array", "map", "bin", "str", "ext"],
)
def test_length_bombs_are_refused_without_allocating(bomb: bytes) -> None:
    tracemalloc.start()
    try:
        with pytest.raises(SerializationError):
            decode(bomb)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1024 * 1024


def test_the_rich_value_budget_is_the_same_both_ways() -> None:
    at_limit = [decimal.Decimal(1)] * MAX_EXT_VALUES
    assert len(decode(encode(at_limit, max_size=None), max_size=None)) == MAX_EXT_VALUES
    with pytest.raises(PayloadTooLargeError, match=f"more than {MAX_EXT_VALUES} rich values"):
        encode([*at_limit, decimal.Decimal(2)], what="result of step 'f'", max_size=None)
    over = msgpack.packb([msgpack.ExtType(3, b"1")] * (MAX_EXT_VALUES + 1))
    with pytest.raises(PayloadTooLargeError, match="rich values"):
        decode(over, max_size=None)


def test_error_messages_quote_hostile_text_briefly() -> None:
    huge = "x" * 100_000
    blob = msgpack.packb(msgpack.ExtType(1, msgpack.packb(huge)))
    with pytest.raises(SerializationError) as info:
        decode(blob)
    assert len(str(info.value)) < 1000
    blob = msgpack.packb(msgpack.ExtType(8, msgpack.packb([huge, {}])))
    with pytest.raises(UnknownTypeError) as unknown:
        decode(blob)
    assert len(str(unknown.value)) < 1000


# --- which classes are rebuilt -----------------------------------------------------------------

SIDE_EFFECTS: list[str] = []


@dataclasses.dataclass
class Imported:
    """Imported here, never registered: a name on the wire must not be enough to build one."""

    x: int = 0

    def __post_init__(self) -> None:
        SIDE_EFFECTS.append(f"built with {self.x}")


class Outer:
    @dataclasses.dataclass
    class Inner:
        x: int = 0


def object_payload(type_name: str, state: Any) -> bytes:
    body = msgpack.packb([type_name, state], use_bin_type=True)
    return msgpack.packb(msgpack.ExtType(8, body), use_bin_type=True)


@pytest.fixture
def allow_list(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever a test allows is forgotten after it."""
    monkeypatch.setattr(codec, "_allowed", set())
    monkeypatch.delenv(codec.ALLOW_MODULES_ENV, raising=False)


@pytest.mark.usefixtures("allow_list")
def test_an_imported_but_unregistered_dataclass_is_not_instantiated() -> None:
    SIDE_EFFECTS.clear()
    with pytest.raises(UnknownTypeError, match="not allowed"):
        decode(object_payload(f"{__name__}.Imported", {"x": 7}))
    assert SIDE_EFFECTS == []


@pytest.mark.usefixtures("allow_list")
def test_an_allowed_modules_dataclass_decodes(monkeypatch: pytest.MonkeyPatch) -> None:
    SIDE_EFFECTS.clear()
    codec.allow_modules("tests.eventlog")  # a package allows its submodules
    assert decode(object_payload(f"{__name__}.Imported", {"x": 7})) == Imported(7)
    assert SIDE_EFFECTS == ["built with 7", "built with 7"]
    monkeypatch.setattr(codec, "_allowed", set())
    monkeypatch.setenv(codec.ALLOW_MODULES_ENV, f"other, {__name__}")
    assert decode(encode(Imported(3))) == Imported(3)
    monkeypatch.setenv(codec.ALLOW_MODULES_ENV, "tests.eventlo")  # a prefix of a name is not enough
    with pytest.raises(UnknownTypeError):
        decode(encode(Imported(3)))


@pytest.mark.usefixtures("allow_list")
def test_allowed_modules_resolve_top_level_classes_of_their_own_only() -> None:
    codec.allow_modules(__name__)
    # A nested class: no attribute walks, whatever the module allows.
    with pytest.raises(UnknownTypeError):
        decode(object_payload(f"{__name__}.Outer.Inner", {"x": 1}))
    # A dataclass another module defines, only imported here.
    assert dataclasses.is_dataclass(ReExported)
    with pytest.raises(UnknownTypeError):
        decode(object_payload(f"{__name__}.ReExported", {"type_name": "a", "state": 1}))
    # Not a class at all; a path through an imported module.
    with pytest.raises(UnknownTypeError):
        decode(object_payload(f"{__name__}.SIDE_EFFECTS", {}))
    with pytest.raises(UnknownTypeError):
        decode(object_payload(f"{__name__}.codec.Unregistered", {"type_name": "a", "state": 1}))


def test_allow_modules_refuses_what_is_not_a_module_name() -> None:
    for bad in ("", "a..b", "a b", "a.*"):
        with pytest.raises(codec.ConfigurationError):
            codec.allow_modules(bad)


def test_a_failed_lookup_imports_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, allow_list: None
) -> None:
    """Not the named module, nor anything its module-level __getattr__ would import."""
    lazy = f"lf_lazy_{uuid.uuid4().hex[:8]}"
    target = f"lf_target_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{target}.py").write_text("IMPORTED = True\n")
    (tmp_path / f"{lazy}.py").write_text(
        "import importlib\n"
        "def __getattr__(name):\n"
        f"    return importlib.import_module({target!r})\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    __import__(lazy)
    codec.allow_modules(lazy, "lf_absent_module")
    try:
        before = set(sys.modules)
        for name in (f"{lazy}.Thing", "lf_absent_module.Thing", f"{target}.X", "json.decoder.X"):
            with pytest.raises(UnknownTypeError):
                decode(object_payload(name, {}))
        assert set(sys.modules) == before
    finally:
        sys.modules.pop(lazy, None)


@pytest.mark.usefixtures("allow_list")
def test_inspecting_still_shows_unknown_classes() -> None:
    with codec.inspecting():
        shown = decode(object_payload("nowhere.Invoice", {"n": 1}))
    assert shown == codec.Unregistered("nowhere.Invoice", {"n": 1})


# --- stream entries ---------------------------------------------------------------------------


def entry(data: bytes, type_: bytes = b"step_completed") -> dict[bytes, bytes]:
    return {b"type": type_, b"corr": b"s1", b"data": data, b"ts": b"5", b"v": b"1"}


def test_a_bad_entry_is_a_serialization_error_naming_it() -> None:
    with pytest.raises(NestingTooDeepError, match=r"^event 9-0 could not be decoded"):
        decode_entry("9-0", entry(raw_tuples(80)))
    with pytest.raises(SerializationError, match=r"^event 9-1 is malformed"):
        decode_entry("9-1", entry(encode({}), type_=b"no_such_type"))
    with pytest.raises(SerializationError, match=r"^event 9-2 is malformed"):
        decode_entry("9-2", {**entry(encode({})), b"ts": b"soon"})
    with pytest.raises(SerializationError):
        decode_entry("9-3", {b"type": 5})  # type: ignore[dict-item]


def test_inspecting_shows_undecodable_data_as_a_marker() -> None:
    with codec.inspecting():
        event = decode_entry("9-0", entry(raw_tuples(80)))
    assert isinstance(event.data, codec.Undecodable)
    assert event.data.reason.startswith("event 9-0 could not be decoded: nested")
    assert repr(event.data).startswith("<undecodable: event 9-0")
    assert event.corr == "s1"
