"""The msgpack codec: rich types round-trip, errors name where and what, nothing is imported."""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import decimal
import enum
import random
import sys
import uuid
from pathlib import Path
from typing import Any

import msgpack
import pytest
from ledgerflow.eventlog import codec
from ledgerflow.eventlog.codec import decode, encode, serializable
from ledgerflow.eventlog.errors import PayloadTooLargeError, SerializationError, UnknownTypeError

# --- classes the tests send (module level, so they are found by import path) ------------


@dataclasses.dataclass
class Line:
    sku: str
    qty: int
    price: decimal.Decimal


@dataclasses.dataclass(frozen=True)
class Customer:
    id: uuid.UUID
    since: dt.date


@dataclasses.dataclass
class Order:
    id: int
    customer: Customer
    lines: list[Line]
    tags: frozenset[str] = frozenset()
    total: decimal.Decimal = dataclasses.field(init=False, default=decimal.Decimal("0"))


@serializable(name="tests.eventlog.Money")
class Money:
    """Not a dataclass: travels through its own hooks under a stable name."""

    def __init__(self, amount: decimal.Decimal, currency: str) -> None:
        self.amount = amount
        self.currency = currency

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Money) and (self.amount, self.currency) == (
            other.amount,
            other.currency,
        )

    def __hash__(self) -> int:
        return hash((self.amount, self.currency))

    def __lf_encode__(self) -> dict[str, Any]:
        return {"amount": self.amount, "currency": self.currency}

    @classmethod
    def __lf_decode__(cls, data: dict[str, Any]) -> Money:
        return cls(data["amount"], data["currency"])


@serializable(name="tests.eventlog.Point")
@dataclasses.dataclass(frozen=True)
class Point:
    x: int
    y: int


class Opaque:
    """Nothing about this class lets ledgerflow carry it."""


class Colour(enum.IntEnum):
    RED = 1


@pytest.fixture
def allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    """This module's dataclasses may be rebuilt (as the CLI allows its APP), for this test only."""
    monkeypatch.setattr(codec, "_allowed", set(codec._allowed))
    codec.allow_modules(__name__)


# --- round trips ------------------------------------------------------------------------

AWARE = dt.datetime(2024, 3, 1, 12, 30, 45, 123456, tzinfo=dt.timezone(dt.timedelta(hours=5)))
ROUND_TRIPS: dict[str, Any] = {
    "datetime-naive": dt.datetime(2024, 3, 1, 12, 30, 45, 123456),
    "datetime-aware": AWARE,
    "datetime-utc": dt.datetime(2000, 1, 1, tzinfo=dt.UTC),
    "date": dt.date(1999, 12, 31),
    "time": dt.time(23, 59, 58, 999),
    "time-aware": dt.time(8, 0, tzinfo=dt.timezone(dt.timedelta(hours=-3))),
    "timedelta": dt.timedelta(days=-3, seconds=7, microseconds=11),
    "decimal": decimal.Decimal("12345678901234567890.000000001"),
    "decimal-negative-zero": decimal.Decimal("-0.00"),
    "uuid": uuid.UUID("12345678-1234-5678-1234-567812345678"),
    "bytes": b"\x00\xffbinary\x80",
    "tuple": (1, "a", None),
    "tuple-nested": (1, (2, (3, ("x", b"y"))), [4, (5,)], {"k": (6, 7)}),
    "empty-tuple": (),
    "set": {3, 1, 2},
    "set-of-tuples": {(1, "a"), (2, "b")},
    "frozenset": frozenset({"a", "b"}),
    "set-of-frozensets": {frozenset({1, 2}), frozenset({3})},
    "plain": {"a": [1, 2.5, True, None, "s"], 1: {"nested": {}}},
    "registered-dataclass": Point(1, -2),
    "registered-hooks": Money(decimal.Decimal("9.99"), "EUR"),
    "in-containers": {"points": [Point(0, 0), (Point(1, 1),)], "money": {Money(1, "X")}},
}


def assert_same(decoded: Any, original: Any) -> None:
    """Equal, and of the same types all the way down (1 == 1.0 and (1,) != [1] matter)."""
    assert decoded == original
    assert type(decoded) is type(original)
    if isinstance(original, dict):
        for key in original:
            assert_same(decoded[key], original[key])
    elif isinstance(original, (list, tuple)):
        for got, want in zip(decoded, original, strict=True):
            assert_same(got, want)


@pytest.mark.parametrize("value", list(ROUND_TRIPS.values()), ids=list(ROUND_TRIPS))
def test_round_trip(value: Any) -> None:
    data = encode(value)
    assert isinstance(data, bytes)
    assert_same(decode(data), value)


def test_datetimes_keep_their_zone() -> None:
    naive = decode(encode(dt.datetime(2024, 1, 2, 3, 4, 5)))
    assert naive.tzinfo is None
    aware = decode(encode(AWARE))
    assert aware.utcoffset() == dt.timedelta(hours=5)
    assert aware.isoformat() == AWARE.isoformat()
    # A date is not mistaken for a datetime, nor a datetime for a date.
    assert type(decode(encode(dt.date(2024, 1, 2)))) is dt.date


@pytest.mark.usefixtures("allowed")
def test_nested_dataclass_round_trip() -> None:
    order = Order(
        id=7,
        customer=Customer(uuid.UUID(int=5), dt.date(2020, 2, 29)),
        lines=[Line("a", 2, decimal.Decimal("1.50")), Line("b", 1, decimal.Decimal("0.1"))],
        tags=frozenset({"gift", "rush"}),
    )
    order.total = decimal.Decimal("3.10")
    back = decode(encode(order))
    assert back == order
    assert type(back) is Order
    assert type(back.customer) is Customer
    assert [type(line) for line in back.lines] == [Line, Line]
    assert type(back.tags) is frozenset
    assert back.total == decimal.Decimal("3.10")  # a field with init=False survives too


def test_registered_classes_travel_by_their_stable_name() -> None:
    data = encode(Money(decimal.Decimal("1"), "USD"))
    assert b"tests.eventlog.Money" in data
    assert b"test_codec" not in data
    assert b"tests.eventlog.Point" in encode(Point(1, 2))
    # An unregistered dataclass travels by its import path instead.
    assert f"{__name__}.Line".encode() in encode(Line("a", 1, decimal.Decimal(1)))
    assert codec.registered_types()["tests.eventlog.Money"] is Money


def test_pydantic_model_round_trip() -> None:
    pydantic = pytest.importorskip("pydantic")

    class Item(pydantic.BaseModel):  # type: ignore[misc, name-defined]
        name: str
        when: dt.date

    serializable(Item, name=f"tests.eventlog.Item.{uuid.uuid4().hex}")
    item = Item(name="x", when=dt.date(2024, 1, 1))
    back = decode(encode(item))
    assert type(back) is Item
    assert back == item


# --- determinism ------------------------------------------------------------------------


def shuffled_copies(items: list[Any], n: int = 60) -> list[set[Any]]:
    rng = random.Random(1234)
    copies = []
    for _ in range(n):
        order = items[:]
        rng.shuffle(order)
        built: set[Any] = set()
        for item in order:
            built.add(item)
        copies.append(built)
    return copies


@pytest.mark.parametrize(
    "items",
    [
        list(range(-300, 300, 7)),
        [f"key-{i}" for i in range(40)],
        [frozenset({i}) for i in range(12)],
        [frozenset({f"s{i}", f"t{i}"}) for i in range(12)],
        [1, "a", None, (1, 2), b"z", 2.5, (None, "b")],
        [float("nan"), 1.0, 2.0],
    ],
    ids=["ints", "strings", "frozensets", "frozensets-of-str", "mixed", "nan"],
)
def test_equal_sets_encode_to_equal_bytes(items: list[Any]) -> None:
    copies = shuffled_copies(items)
    assert all(copy == copies[0] for copy in copies)
    assert len({encode(copy) for copy in copies}) == 1
    assert len({encode(frozenset(copy)) for copy in copies}) == 1
    assert len({encode({"k": [copy]}) for copy in copies}) == 1


def test_sets_of_frozensets_iterate_differently_yet_encode_alike() -> None:
    # The precondition that makes the check above meaningful for partial orders:
    # equal sets whose iteration orders differ (sorted() then depends on that order).
    copies = shuffled_copies([frozenset({i}) for i in range(12)])
    assert len({tuple(copy) for copy in copies}) > 1
    assert len({encode(copy) for copy in copies}) == 1


def test_equal_values_encode_to_equal_bytes() -> None:
    a = {"b": {2, 1}, "a": (Point(1, 2), frozenset({"x", "y"}))}
    b = {"b": {1, 2}, "a": (Point(1, 2), frozenset({"y", "x"}))}
    assert encode(a) == encode(b)


# --- errors -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "path", "type_name"),
    [
        ([{"k": Opaque()}], "argument 'x'[0]['k']", f"{__name__}.Opaque"),
        ({"a": [1, (2, object())]}, "argument 'x'['a'][1][1]", "builtins.object"),
        ({"a": collections.OrderedDict(b=1)}, "argument 'x'['a']", "collections.OrderedDict"),
        ([1, Colour.RED], "argument 'x'[1]", f"{__name__}.Colour"),
        (
            Order(1, Customer(uuid.UUID(int=1), dt.date(2020, 1, 1)), [Opaque()]),  # type: ignore[list-item]
            "argument 'x'.lines[0]",
            f"{__name__}.Opaque",
        ),
        ({Opaque(): 1}, "argument 'x' key", f"{__name__}.Opaque"),
    ],
    ids=["list-dict", "nested-tuple", "dict-subclass", "int-enum", "dataclass-field", "dict-key"],
)
def test_unserializable_value_names_its_path_and_type(
    value: Any, path: str, type_name: str
) -> None:
    with pytest.raises(SerializationError) as info:
        encode(value, what="argument 'x'")
    message = str(info.value)
    assert message.startswith(path)
    assert f"is of type {type_name}," in message
    assert isinstance(info.value, TypeError)


def test_unserializable_at_top_level_names_the_argument() -> None:
    with pytest.raises(SerializationError, match=r"^argument 'order' of step 'charge' is of type"):
        encode(Opaque(), what="argument 'order' of step 'charge'")


def test_payload_over_max_size_is_refused() -> None:
    value = {"blob": b"x" * 2000}
    size = len(encode(value, max_size=None))
    assert size > 2000
    assert encode(value, max_size=size) == encode(value, max_size=None)
    with pytest.raises(PayloadTooLargeError) as info:
        encode(value, what="result of step 'big'", max_size=size - 1)
    message = str(info.value)
    assert "result of step 'big'" in message
    assert f"{size} bytes" in message
    assert f"{size - 1}-byte" in message
    assert isinstance(info.value, SerializationError)


def test_default_max_size_is_one_mebibyte() -> None:
    assert codec.DEFAULT_MAX_PAYLOAD == 1024 * 1024
    with pytest.raises(PayloadTooLargeError):
        encode(b"x" * (1024 * 1024))


@pytest.mark.parametrize(
    "garbage",
    [
        b"\xc1",  # a byte msgpack never uses
        b"\x93\x01",  # truncated array
        b"\x01\x02",  # trailing data
        b"",
        msgpack.ExtType(1, b"\x00"),  # a datetime ext whose body is not a string
        msgpack.ExtType(4, b"short"),  # a UUID ext of the wrong length
        msgpack.ExtType(8, b"\x05"),  # an object ext without [name, state]
    ],
    ids=["c1", "truncated", "extra", "empty", "bad-datetime", "bad-uuid", "bad-object"],
)
def test_decoding_garbage_raises_serialization_error(garbage: Any) -> None:
    data = msgpack.packb(garbage) if isinstance(garbage, msgpack.ExtType) else garbage
    with pytest.raises(SerializationError) as info:
        decode(data, what="event 1-0")
    assert "event 1-0" in str(info.value)


def write_module(tmp_path: Path, name: str) -> None:
    (tmp_path / f"{name}.py").write_text(
        "import dataclasses\n"
        "IMPORTED = True\n"
        "@dataclasses.dataclass\n"
        "class Thing:\n"
        "    x: int = 0\n"
    )


def object_payload(type_name: str, state: dict[str, Any]) -> bytes:
    body = msgpack.packb([type_name, state], use_bin_type=True)
    return msgpack.packb(msgpack.ExtType(codec._EXT_OBJECT, body), use_bin_type=True)


def test_unknown_class_name_raises_and_imports_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = f"lf_never_imported_{uuid.uuid4().hex[:8]}"
    write_module(tmp_path, module)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(codec, "_allowed", set(codec._allowed))
    codec.allow_modules(module)
    assert module not in sys.modules
    with pytest.raises(UnknownTypeError) as info:
        decode(object_payload(f"{module}.Thing", {"x": 1}))
    assert f"{module}.Thing" in str(info.value)
    assert "not imported" in str(info.value)
    assert module not in sys.modules
    # Once the application itself imported it, the same payload decodes (its module is allowed).
    imported = __import__(module)
    try:
        thing = decode(object_payload(f"{module}.Thing", {"x": 1}))
        assert type(thing) is imported.Thing
        assert thing.x == 1
    finally:
        sys.modules.pop(module, None)


@pytest.mark.usefixtures("allowed")
def test_only_dataclasses_decode_by_import_path() -> None:
    # Opaque is defined in an allowed module but is neither registered nor a dataclass.
    with pytest.raises(SerializationError):
        decode(object_payload(f"{__name__}.Opaque", {}))
    with pytest.raises(SerializationError):
        decode(object_payload("os.system", {}))


def test_two_classes_under_one_name_is_refused() -> None:
    name = f"tests.eventlog.Dup.{uuid.uuid4().hex}"

    @serializable(name=name)
    @dataclasses.dataclass
    class First:
        a: int

    @dataclasses.dataclass
    class Second:
        a: int

    assert serializable(First, name=name) is First  # registering the same class again is fine
    with pytest.raises(SerializationError, match="already registered"):
        serializable(name=name)(Second)
    assert codec.registered_types()[name] is First
    assert type(decode(encode(First(1)))) is First


def test_a_class_without_a_way_to_travel_cannot_register() -> None:
    with pytest.raises(SerializationError, match="cannot be registered"):
        serializable(name=f"tests.eventlog.Bad.{uuid.uuid4().hex}")(Opaque)


def test_unknown_classes_are_refused_except_when_inspecting() -> None:
    """As a process that never imported the application sees one of its objects."""
    import msgpack
    from ledgerflow.eventlog.codec import Unregistered, inspecting

    state = {"name": "x", "amount": 3}
    inner = msgpack.packb(["nowhere.billing.Invoice", state], use_bin_type=True)
    blob = msgpack.packb(msgpack.ExtType(codec._EXT_OBJECT, inner), use_bin_type=True)
    with pytest.raises(SerializationError, match="is not registered"):
        codec.decode(blob)
    with inspecting():
        shown = codec.decode(blob)
    assert shown == Unregistered("nowhere.billing.Invoice", state)
    assert repr(shown) == "Invoice(name='x', amount=3)"
    with pytest.raises(SerializationError):  # strict again outside the block
        codec.decode(blob)
