"""msgpack codec for every payload ledgerflow stores or sends.

Never pickle: a payload from a queue or a stream must not be able to run code
when it is decoded. Rich types travel as msgpack extension types; user classes
travel by a stable type name and are rebuilt only if that name is

* registered (``@serializable``, or ``serializable(cls)``), or
* a dataclass or pydantic model defined at the top level of an *allowed* module
  (``allow_modules("myapp")``, ``LEDGERFLOW_ALLOW_MODULES=myapp,other``; the CLI
  allows the APP it is given) that the decoding process has already imported.

Decoding never imports a module and never walks attributes: a name on the wire
is looked up in the registry, or in the allowed module's own ``__dict__``,
nothing else.

Every payload is treated as hostile. Decoding refuses input over a size limit
before unpacking, passes msgpack's length limits derived from the input, caps
nesting (containers and extension values together, ``MAX_DEPTH``) and the number
of extension values per payload (``MAX_EXT_VALUES``), and raises nothing but
``SerializationError`` (or a subclass) whatever the bytes. Encoding applies the
same limits to what it writes, so whatever ledgerflow encodes it can decode.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import datetime as dt
import decimal
import itertools
import os
import sys
import uuid
from collections.abc import Callable, Iterator
from typing import Any, Final, TypeVar

import msgpack

from .blobref import BlobRef
from .errors import (
    ConfigurationError,
    NestingTooDeepError,
    PayloadTooLargeError,
    SerializationError,
    UnknownTypeError,
)

DEFAULT_MAX_PAYLOAD: Final = 1024 * 1024
"""Per-value limit unless a step says otherwise (``@lf.step(max_payload=...)``)."""

MAX_PAYLOAD: Final = 8 * 1024 * 1024
"""The most any one value may be configured to: a step's ``max_payload`` above it is refused.

Queue messages carry one step's arguments (see ``broker.topology.MAX_MESSAGE_BYTES``)
and a decoded payload costs many times its size in memory, so the ceiling stays
far below what RabbitMQ or Redis would accept.
"""

MAX_EVENT_BYTES: Final = MAX_PAYLOAD + 64 * 1024
"""Decode limit for a stored event's data: one value at the ceiling plus the fields
ledgerflow adds around it (a step_created carries the arguments blob, its name and
queue). ``NewEvent`` refuses to write anything larger, so every event ledgerflow
writes can be read back."""

MAX_DEPTH: Final = 64
"""How deep a user value (an argument, a result, a hook payload) may nest.

Containers (list, dict, tuple, set, frozenset, objects) and extension values
count together. Each nested extension value (tuple, set, object) makes msgpack's
C unpacker call ``unpackb`` again, and each call puts its parser state on the C
stack: about 43 KB per level (measured: 194 levels fill the main thread's 8 MiB
stack and the process segfaults). 64 levels, plus ``ENVELOPE_DEPTH``, stay under
3 MB, well inside any thread's default stack, and far beyond what real data needs.
"""

ENVELOPE_DEPTH: Final = 2
"""Levels ledgerflow's own records may add around a user value: ``[args, kwargs]``
around step arguments, ``{"args": [...]}`` in run_created, ``{"result": ...}``."""

MAX_DECODE_DEPTH: Final = MAX_DEPTH + ENVELOPE_DEPTH
"""What ``decode`` accepts by default: any user value inside any of our envelopes."""

MAX_EXT_VALUES: Final = 100_000
"""Extension values (datetimes, decimals, UUIDs, tuples, sets, objects) in one payload.

Each costs a Python call and often a nested unpack, about a microsecond: without a
budget a payload of 3-byte extension values would cost seconds per megabyte.
Counted alike when encoding and decoding, so whatever is written can be read."""

ALLOW_MODULES_ENV: Final = "LEDGERFLOW_ALLOW_MODULES"

_EXT_DATETIME = 1
_EXT_DATE = 2
_EXT_DECIMAL = 3
_EXT_UUID = 4
_EXT_TUPLE = 5
_EXT_SET = 6
_EXT_FROZENSET = 7
_EXT_OBJECT = 8
_EXT_TIME = 9
_EXT_TIMEDELTA = 10
_EXT_BLOB = 11  # a value stored out of line (eventlog.blobref.BlobRef): [digest, size]

_CONTAINER_EXTS = frozenset({_EXT_TUPLE, _EXT_SET, _EXT_FROZENSET, _EXT_OBJECT})

# Every byte that can start a msgpack map, array or extension value. Each level of
# nesting needs one, so a payload holding no more of them than the depth limit
# cannot be too deep, and the exact (costlier) measurement is skipped: that is the
# case for nearly every event, whose data is a small flat map.
_HEADER_BYTES = bytes(
    [*range(0x80, 0xA0), 0xDC, 0xDD, 0xDE, 0xDF, 0xC7, 0xC8, 0xC9, *range(0xD4, 0xD9)]
)
_NOT_HEADER_BYTES = bytes(sorted(set(range(256)) - set(_HEADER_BYTES)))

_TEXT_LIMIT = 300
"""Error messages quote at most this much of anything taken from the payload."""

T = TypeVar("T", bound=type)

_registry: dict[str, type] = {}
_names: dict[type, str] = {}
_allowed: set[str] = set()
_env_allowed: tuple[str, frozenset[str]] = ("", frozenset())
_inspecting: contextvars.ContextVar[bool] = contextvars.ContextVar("inspecting", default=False)


@dataclasses.dataclass(frozen=True)
class Unregistered:
    """An object whose class this process does not know, shown rather than refused.

    Only inside ``inspecting()``: an operator's ``runs show`` or the dashboard must be
    able to read any run without importing the application's code. Workers and
    schedulers never inspect: for them an unknown class stays an error.
    """

    type_name: str
    state: Any

    def __repr__(self) -> str:
        fields = self.state if isinstance(self.state, dict) else {"state": self.state}
        inner = ", ".join(f"{k}={v!r}" for k, v in fields.items())
        return f"{self.type_name.rpartition('.')[2]}({inner})"


@dataclasses.dataclass(frozen=True)
class Undecodable:
    """Stands in for event data that cannot be decoded at all, inside ``inspecting()`` only.

    One bad event must not hide the rest of a run from the tools an operator uses
    to find it; processes that act on a run never see this marker.
    """

    reason: str

    def __repr__(self) -> str:
        return f"<undecodable: {self.reason}>"


@contextlib.contextmanager
def inspecting() -> Iterator[None]:
    """Decode objects of unknown classes as ``Unregistered`` in this context (read-only tools).

    Event data that cannot be decoded at all becomes an ``Undecodable`` marker
    (see ``eventlog.events.decode_entry``) instead of an error.
    """
    token = _inspecting.set(True)
    try:
        yield
    finally:
        _inspecting.reset(token)


@contextlib.contextmanager
def exact() -> Iterator[None]:
    """Decode strictly again inside ``inspecting()``: an unknown class stays an error.

    For code that copies what it reads somewhere else and then deletes the
    original (``runs archive``): an ``Unregistered`` stand-in re-encodes as
    something else, so a copy made through one would not be the run.
    """
    token = _inspecting.set(False)
    try:
        yield
    finally:
        _inspecting.reset(token)


def is_inspecting() -> bool:
    return _inspecting.get()


# --- which classes may be rebuilt --------------------------------------------------------


def serializable(cls: T | None = None, *, name: str | None = None) -> Any:
    """Register a class to travel by a stable type name.

    The name, not the import path, goes on the wire, so a class can move between
    modules without breaking runs already in flight. The class must be a
    dataclass, a pydantic model, or define ``__lf_encode__`` / ``__lf_decode__``.
    """

    def register(klass: T) -> T:
        type_name = name or f"{klass.__module__}.{klass.__qualname__}"
        existing = _registry.get(type_name)
        if existing is not None and existing is not klass:
            raise SerializationError(
                f"type name {type_name!r} is already registered for {existing!r}"
            )
        if not (
            dataclasses.is_dataclass(klass)
            or _is_pydantic(klass)
            or (hasattr(klass, "__lf_encode__") and hasattr(klass, "__lf_decode__"))
        ):
            raise SerializationError(
                f"{klass!r} cannot be registered: make it a dataclass or pydantic model, "
                "or give it __lf_encode__() and a classmethod __lf_decode__(data)"
            )
        _registry[type_name] = klass
        _names[klass] = type_name
        return klass

    if cls is None:
        return register
    return register(cls)


def allow_modules(*modules: str) -> None:
    """Let dataclasses and pydantic models of these modules (and their submodules) decode.

    Only classes defined at the top level of a module the process has already
    imported qualify; nothing is ever imported to decode a payload. The CLI
    allows the APP module it is given; an application that decodes its own
    unregistered classes elsewhere (a producer reading results) calls this, or
    sets ``LEDGERFLOW_ALLOW_MODULES=myapp,other``.
    """
    for module in modules:
        if not _is_module_name(module):
            raise ConfigurationError(
                f"cannot allow {module!r}: expected a dotted module name such as 'myapp.models'"
            )
    _allowed.update(modules)


def allowed_modules() -> frozenset[str]:
    """Modules allowed by ``allow_modules`` and ``LEDGERFLOW_ALLOW_MODULES``."""
    return frozenset(_allowed) | _modules_from_env()


def registered_types() -> dict[str, type]:
    return dict(_registry)


def _modules_from_env() -> frozenset[str]:
    """Parsed once per value of the variable (a test may change it)."""
    global _env_allowed
    raw = os.environ.get(ALLOW_MODULES_ENV, "")
    if raw != _env_allowed[0]:
        parts = (p.strip() for p in raw.split(","))
        _env_allowed = (raw, frozenset(p for p in parts if _is_module_name(p)))
    return _env_allowed[1]


def _is_module_name(text: str) -> bool:
    return bool(text) and all(part.isidentifier() for part in text.split("."))


def _module_allowed(module: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in allowed_modules())


def _is_pydantic(klass: type) -> bool:
    return hasattr(klass, "model_dump") and hasattr(klass, "model_validate")


def _is_object(value: Any) -> bool:
    """True for values that travel as a named class: registered, dataclass or pydantic."""
    klass = type(value)
    return (
        klass in _names
        or (dataclasses.is_dataclass(value) and not isinstance(value, type))
        or _is_pydantic(klass)
    )


def _type_name(klass: type) -> str:
    return _names.get(klass) or f"{klass.__module__}.{klass.__qualname__}"


def _lookup(type_name: str) -> type:
    """The class a wire name may stand for, or UnknownTypeError saying how to allow it."""
    klass = _registry.get(type_name)
    if klass is not None:
        return klass
    module_name, _, attribute = type_name.rpartition(".")
    shown = repr(brief(type_name))
    if not module_name or not _module_allowed(module_name):
        raise UnknownTypeError(
            f"cannot decode an instance of {shown}: the class is not registered with "
            "@lf.serializable and its module is not allowed (lf.allow_modules(...) or "
            f"{ALLOW_MODULES_ENV})"
        )
    module = sys.modules.get(module_name)
    if module is None:
        raise UnknownTypeError(
            f"cannot decode an instance of {shown}: its module is allowed but not imported "
            "in this process, and decoding never imports code"
        )
    # The module's own namespace only: no getattr (a module __getattr__ may import),
    # no dotted paths into other objects, nothing the module merely re-exports.
    candidate = vars(module).get(attribute)
    if (
        isinstance(candidate, type)
        and candidate.__module__ == module_name
        and candidate.__qualname__ == attribute
        and (dataclasses.is_dataclass(candidate) or _is_pydantic(candidate))
    ):
        return candidate
    raise UnknownTypeError(
        f"cannot decode an instance of {shown}: {brief(module_name)!r} defines no dataclass "
        "or pydantic model of that name at its top level; register the class with "
        "@lf.serializable"
    )


def _object_state(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    if _is_pydantic(type(value)):
        return value.model_dump(mode="python")
    return value.__lf_encode__()


def _rebuild(klass: type, state: Any) -> Any:
    if dataclasses.is_dataclass(klass):
        if not isinstance(state, dict):
            raise SerializationError(f"the state of a {klass.__qualname__} must be a map")
        init = {
            f.name: state[f.name] for f in dataclasses.fields(klass) if f.init and f.name in state
        }
        obj = klass(**init)
        for f in dataclasses.fields(klass):
            if not f.init and f.name in state:
                object.__setattr__(obj, f.name, state[f.name])
        return obj
    if _is_pydantic(klass):
        return klass.model_validate(state)  # type: ignore[attr-defined]
    return klass.__lf_decode__(state)  # type: ignore[attr-defined]


# --- encoding ----------------------------------------------------------------------------


class _TooDeep(Exception):
    """Raised inside the packer: extension values nest past the limit."""


class _TooManyValues(Exception):
    """Raised inside the packer: more extension values than ``MAX_EXT_VALUES``."""


class _Encoder:
    """One encode: ``default`` turns rich values into extension types, within the limits.

    Extension values nest by packing their contents with a nested ``packb``, so
    the nesting is bounded here, where it happens, not after the stack is spent.
    """

    __slots__ = ("counted", "limit", "nesting", "values")

    def __init__(self, limit: int, *, counted: bool = True) -> None:
        self.limit = limit
        self.counted = counted
        self.nesting = 0
        self.values = 0

    def pack(self, value: Any) -> bytes:
        packed: bytes = msgpack.packb(
            value, default=self.default, use_bin_type=True, strict_types=True
        )
        return packed

    def default(self, value: Any) -> msgpack.ExtType:
        if self.counted:
            self.values += 1
            if self.values > MAX_EXT_VALUES:
                raise _TooManyValues
        if isinstance(value, dt.datetime):
            return msgpack.ExtType(_EXT_DATETIME, _plain(value.isoformat()))
        if isinstance(value, dt.date):
            return msgpack.ExtType(_EXT_DATE, _plain(value.isoformat()))
        if isinstance(value, dt.time):
            return msgpack.ExtType(_EXT_TIME, _plain(value.isoformat()))
        if isinstance(value, dt.timedelta):
            return msgpack.ExtType(
                _EXT_TIMEDELTA, _plain([value.days, value.seconds, value.microseconds])
            )
        if isinstance(value, BlobRef):
            return msgpack.ExtType(_EXT_BLOB, _plain([value.digest, value.size]))
        if isinstance(value, decimal.Decimal):
            return msgpack.ExtType(_EXT_DECIMAL, str(value).encode())
        if isinstance(value, uuid.UUID):
            return msgpack.ExtType(_EXT_UUID, value.bytes)
        if isinstance(value, tuple) and not hasattr(value, "_fields"):
            return self._nested(_EXT_TUPLE, list(value))
        if isinstance(value, frozenset):
            return self._nested(_EXT_FROZENSET, self._sorted_items(value))
        if isinstance(value, set):
            return self._nested(_EXT_SET, self._sorted_items(value))
        klass = type(value)
        if _is_object(value):
            return self._nested(_EXT_OBJECT, [_type_name(klass), _object_state(value)])
        raise TypeError(f"cannot serialize {klass.__qualname__}")

    def _nested(self, code: int, contents: Any) -> msgpack.ExtType:
        if self.nesting >= self.limit:
            raise _TooDeep
        self.nesting += 1
        try:
            return msgpack.ExtType(code, self.pack(contents))
        finally:
            self.nesting -= 1

    def _sorted_items(self, items: set[Any] | frozenset[Any]) -> list[Any]:
        """Sets go out in a stable order so equal values encode to equal bytes (fingerprints)."""
        try:
            ordered = sorted(items)
            if all(a < b for a, b in itertools.pairwise(ordered)):
                return ordered
        except (TypeError, ArithmeticError):  # a Decimal NaN refuses to be ordered
            pass
        # Mixed types, or a partial order (sets of sets, NaN) where sorted() depends on the
        # iteration order: order by each item's encoding, a total order equal items share.
        # Those encodings are not written, so they do not count against the budget; they
        # nest inside this set, one level below the encoder's current nesting.
        return sorted(items, key=_Encoder(self.limit - self.nesting - 1, counted=False).pack)


def _plain(value: Any) -> bytes:
    """The contents of a leaf extension value: plain msgpack, nothing nested."""
    packed: bytes = msgpack.packb(value, use_bin_type=True)
    return packed


def encode(
    value: Any,
    *,
    what: str = "value",
    max_size: int | None = DEFAULT_MAX_PAYLOAD,
    envelope: int = 0,
) -> bytes:
    """Encode a payload; ``what`` names it in errors (e.g. "argument 'order' of step 'charge'").

    ``envelope`` is how many levels ledgerflow itself put around the user's
    value (at most ``ENVELOPE_DEPTH``): the value inside may still nest
    ``MAX_DEPTH`` deep, and errors report the value's own depth.
    """
    if not 0 <= envelope <= ENVELOPE_DEPTH:
        raise ValueError(f"envelope must be between 0 and {ENVELOPE_DEPTH}, got {envelope}")
    limit = MAX_DEPTH + envelope
    try:
        data = _Encoder(limit).pack(value)
    except (TypeError, ValueError, OverflowError, RecursionError, _TooDeep, _TooManyValues) as exc:
        raise _encode_error(value, what, exc, envelope) from None
    if max_size is not None and len(data) > max_size:
        raise PayloadTooLargeError(
            f"{what} is {len(data)} bytes encoded, over the {max_size}-byte payload limit; "
            "store large data elsewhere and pass a reference"
        )
    if _may_nest(data, limit):
        # Measured on the bytes, exactly as decode() will measure them.
        _, depth = _Decoder(limit, rebuild=False).decode(data)
        if depth > limit:
            raise _too_deep(what, depth - envelope)
    return data


def _encode_error(value: Any, what: str, exc: BaseException, envelope: int) -> SerializationError:
    """Say what is wrong with a value the packer refused, naming where it sits."""
    if isinstance(exc, _TooManyValues):
        return PayloadTooLargeError(
            f"{what} holds more than {MAX_EXT_VALUES} rich values (datetimes, decimals, UUIDs, "
            "tuples, sets, objects), over the limit; store large data elsewhere and pass a "
            "reference"
        )
    depth = value_depth(value)
    if depth is None:
        return NestingTooDeepError(
            f"{what} contains itself (a container or object inside its own contents)"
        )
    if depth - envelope > MAX_DEPTH:
        return _too_deep(what, depth - envelope)
    found = find_unserializable(value, what)
    if found is not None:
        where, klass = found
        return SerializationError(
            f"{where} is of type {klass.__module__}.{klass.__qualname__}, which ledgerflow "
            "cannot serialize; use plain data, a dataclass, a pydantic model, or register "
            "the class with @lf.serializable"
        )
    return SerializationError(f"{what} cannot be serialized: {brief(str(exc))}")


def _too_deep(what: str, depth: int) -> NestingTooDeepError:
    return NestingTooDeepError(
        f"{what} is nested {depth} deep, over the limit of {MAX_DEPTH} "
        "(containers and objects inside one another)"
    )


def _parts(value: Any) -> tuple[list[Any], int] | None:
    """(what a value contains, levels it adds itself) as ledgerflow encodes it; None for a leaf.

    An object adds no level of its own: like ``decode``, it counts as its state
    (a dataclass's field map is one level).
    """
    if type(value) is dict:
        return list(itertools.chain.from_iterable(value.items())), 1
    if type(value) is list or isinstance(value, (set, frozenset)):
        return list(value), 1
    if isinstance(value, tuple) and not hasattr(value, "_fields"):
        return list(value), 1
    if _is_object(value):
        try:
            state = _object_state(value)
        except Exception:
            return None
        return [state], 0
    return None


def value_depth(value: Any) -> int | None:
    """How deep a value nests, as ``encode`` counts it; None if it contains itself.

    Iterative (no Python recursion) and each part is measured once, so neither a
    deep value, a shared subtree nor a cycle can make it run away.
    """
    done: dict[int, int] = {}
    active: set[int] = set()
    # Holds every measured part: object states are built afresh, and a freed one's id
    # could otherwise be reused by another part while ``done`` still names it.
    keep: list[Any] = []
    stack: list[tuple[Any, tuple[list[Any], int] | None]] = [(value, None)]
    while stack:
        node, parts = stack[-1]
        key = id(node)
        if parts is None:
            if key in done:
                stack.pop()
                continue
            found = _parts(node)
            if found is None:
                done[key] = 0
                keep.append(node)
                stack.pop()
                continue
            active.add(key)
            stack[-1] = (node, found)
            for child in found[0]:
                if id(child) in active:
                    return None
                if id(child) not in done:
                    stack.append((child, None))
        else:
            children, own = parts
            done[key] = own + max((done.get(id(child), 0) for child in children), default=0)
            keep.append(node)
            active.discard(key)
            stack.pop()
    return done.get(id(value), 0)


def find_unserializable(value: Any, path: str = "value") -> tuple[str, type] | None:
    """Walk a value to name the first part msgpack cannot carry (for the error message).

    Iterative, and each container is visited once, so a deep, shared or cyclic
    value cannot exhaust the stack or loop forever.
    """
    seen: set[int] = set()
    stack: list[tuple[Any, str]] = [(value, path)]
    while stack:
        item, where = stack.pop()
        found, children = _inspect_part(item, where)
        if found is not None:
            return found
        if children and id(item) not in seen:
            seen.add(id(item))
            stack.extend(reversed(children))
    return None


def _inspect_part(value: Any, path: str) -> tuple[tuple[str, type] | None, list[tuple[Any, str]]]:
    """(what is wrong with this part itself, its parts to look at next in order)."""
    # Exact types, as msgpack's strict_types packs them: subclasses (OrderedDict, IntEnum,
    # namedtuple) are not carried and must be named here, not passed over.
    if value is None or type(value) in (bool, int, float, str, bytes, bytearray, memoryview):
        return None, []
    if isinstance(value, (dt.datetime, dt.date, dt.time, dt.timedelta, decimal.Decimal, uuid.UUID)):
        return None, []
    if type(value) is dict:
        parts: list[tuple[Any, str]] = []
        for key, item in value.items():
            parts += [(key, f"{path} key {key!r}"), (item, f"{path}[{key!r}]")]
        return None, parts
    if (
        type(value) is list
        or isinstance(value, (set, frozenset))
        or (isinstance(value, tuple) and not hasattr(value, "_fields"))
    ):
        return None, [(item, f"{path}[{index}]") for index, item in enumerate(value)]
    if _is_object(value):
        state = _object_state(value)
        if isinstance(state, dict):
            return None, [(item, f"{path}.{key}") for key, item in state.items()]
        return None, [(state, path)]
    return (path, type(value)), []


# --- decoding ----------------------------------------------------------------------------


def _may_nest(data: bytes, limit: int) -> bool:
    """Could these bytes nest deeper than ``limit``? False is certain; True means measure."""
    return len(data) > limit and len(data.translate(None, _NOT_HEADER_BYTES)) > limit


def _leaf_text(data: bytes, kind: str) -> str:
    text = msgpack.unpackb(data, raw=False)
    if not isinstance(text, str) or len(text) > 64:
        raise SerializationError(f"a {kind} value must be a short ISO string")
    return text


def _leaf_timedelta(data: bytes) -> dt.timedelta:
    parts = msgpack.unpackb(data, raw=False)
    if not isinstance(parts, list) or len(parts) != 3 or not all(type(p) is int for p in parts):
        raise SerializationError("a timedelta value must be [days, seconds, microseconds]")
    days, seconds, micros = parts
    return dt.timedelta(days=days, seconds=seconds, microseconds=micros)


def _leaf_uuid(data: bytes) -> uuid.UUID:
    if len(data) != 16:
        raise SerializationError(f"a UUID value must be 16 bytes, got {len(data)}")
    return uuid.UUID(bytes=data)


def _leaf_blob(data: bytes) -> BlobRef:
    parts = msgpack.unpackb(data, raw=False)
    if not isinstance(parts, list) or len(parts) != 2:
        raise SerializationError("a blob reference must be [digest, size]")
    try:
        return BlobRef(parts[0], parts[1])
    except ValueError as exc:
        raise SerializationError(str(exc)) from None


# Extension values holding no other values: parsed without a nested, ext-aware unpack.
_LEAVES: dict[int, Callable[[bytes], Any]] = {
    _EXT_DATETIME: lambda data: dt.datetime.fromisoformat(_leaf_text(data, "datetime")),
    _EXT_DATE: lambda data: dt.date.fromisoformat(_leaf_text(data, "date")),
    _EXT_TIME: lambda data: dt.time.fromisoformat(_leaf_text(data, "time")),
    _EXT_TIMEDELTA: _leaf_timedelta,
    _EXT_DECIMAL: lambda data: decimal.Decimal(data.decode("ascii")),
    _EXT_UUID: _leaf_uuid,
    _EXT_BLOB: _leaf_blob,
}


def _unpack(data: bytes, ext_hook: Callable[[int, bytes], Any]) -> Any:
    """msgpack with every length limit bounded by the input: a header claiming 2**31
    elements in ten bytes is refused before anything is allocated."""
    size = len(data)
    return msgpack.unpackb(
        data,
        ext_hook=ext_hook,
        raw=False,
        strict_map_key=False,
        max_str_len=size,
        max_bin_len=size,
        max_array_len=size,
        max_map_len=size // 2,
        max_ext_len=size,
    )


def _contents(code: int, payload: Any) -> Any:
    """What a container extension value holds, checked: a list, or an object's state."""
    if code == _EXT_OBJECT:
        if not (type(payload) is list and len(payload) == 2 and type(payload[0]) is str):
            raise SerializationError("an object value must be [type name, state]")
        return payload[1]
    if type(payload) is not list:
        raise SerializationError(
            f"a tuple or set value must hold a list, not {type(payload).__name__}"
        )
    return payload


def _build(code: int, contents: Any, payload: list[Any]) -> Any:
    if code == _EXT_TUPLE:
        return tuple(contents)
    if code == _EXT_SET:
        return set(contents)
    if code == _EXT_FROZENSET:
        return frozenset(contents)
    type_name = payload[0]
    try:
        klass = _lookup(type_name)
    except UnknownTypeError:
        if _inspecting.get():
            return Unregistered(type_name, contents)
        raise
    return _rebuild(klass, contents)


def _shallow_ext_hook(code: int, data: bytes) -> Any:
    """The ext hook for payloads too small to break a limit (see ``_may_nest``).

    Fewer header bytes than the depth limit bound both the nesting and the number
    of extension values, so no accounting is needed: the common, fast case.
    """
    leaf = _LEAVES.get(code)
    if leaf is not None:
        return leaf(data)
    if code not in _CONTAINER_EXTS:
        return msgpack.ExtType(code, data)
    payload = _unpack(data, _shallow_ext_hook)
    return _build(code, _contents(code, payload), payload)


class _Shape:
    """A container extension value seen only for its shape (``rebuild=False``)."""

    __slots__ = ()


class _Decoder:
    """One decode of a payload that could break a limit: nesting, budget and depth accounted.

    Each container extension value's depth is recorded by identity as it is
    built, so the whole payload is walked once, bottom up, and an object's state
    is measured before its class is instantiated. ``rebuild=False`` only
    measures, instantiating nothing: how ``encode`` checks its own output.
    """

    __slots__ = ("depths", "limit", "nesting", "rebuild", "values")

    def __init__(self, limit: int, *, rebuild: bool = True) -> None:
        self.limit = limit
        self.rebuild = rebuild
        self.nesting = 0
        self.values = 0
        # id -> (value, depth); the value is kept so its id cannot be reused meanwhile.
        self.depths: dict[int, tuple[Any, int]] = {}

    def decode(self, data: bytes) -> tuple[Any, int]:
        """The value and its depth."""
        value = _unpack(data, self.ext_hook)
        return value, self.depth(value)

    def ext_hook(self, code: int, data: bytes) -> Any:
        self.values += 1
        if self.values > MAX_EXT_VALUES:
            raise PayloadTooLargeError(
                f"more than {MAX_EXT_VALUES} rich values (datetimes, decimals, tuples, ...)"
            )
        leaf = _LEAVES.get(code)
        if leaf is not None:
            return leaf(data) if self.rebuild else None
        if code not in _CONTAINER_EXTS:
            return msgpack.ExtType(code, data)
        # Bounded before the nested unpack, not after: each level costs C stack.
        if self.nesting >= self.limit:
            raise NestingTooDeepError(f"nested more than {self.limit} deep")
        self.nesting += 1
        try:
            payload = _unpack(data, self.ext_hook)
        finally:
            self.nesting -= 1
        contents = _contents(code, payload)
        depth = self.depth(contents)
        if depth > self.limit:
            raise NestingTooDeepError(f"nested {depth} deep, over the limit of {self.limit}")
        value = _build(code, contents, payload) if self.rebuild else _Shape()
        self.depths[id(value)] = (value, depth)
        return value

    def depth(self, root: Any) -> int:
        """Levels of containers in ``root``, counting recorded extension values by their depth.

        Iterative: a payload may nest a thousand plain levels inside one unpack.
        """
        depths = self.depths
        deepest = 0
        stack: list[tuple[Any, int]] = [(root, 0)]
        while stack:
            node, above = stack.pop()
            kind = type(node)
            if kind is list:
                children: Any = node
            elif kind is dict:
                children = itertools.chain.from_iterable(node.items())
            else:
                known = depths.get(id(node))
                if known is not None and known[0] is node:
                    deepest = max(deepest, above + known[1])
                continue
            level = above + 1
            deepest = max(deepest, level)
            for child in children:
                child_kind = type(child)
                if child_kind is list or child_kind is dict or id(child) in depths:
                    stack.append((child, level))
        return deepest


def decode(
    data: bytes | bytearray | memoryview,
    *,
    what: str = "payload",
    max_size: int | None = DEFAULT_MAX_PAYLOAD,
    max_depth: int = MAX_DECODE_DEPTH,
) -> Any:
    """Decode a payload; anything wrong with it is a ``SerializationError`` naming ``what``.

    Input over ``max_size`` bytes is refused before it is unpacked. Subclasses say
    why: ``PayloadTooLargeError`` (size, or too many rich values),
    ``NestingTooDeepError``, ``UnknownTypeError`` (a class this process may not
    rebuild); a plain ``SerializationError`` for malformed bytes.
    """
    if type(data) is not bytes:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise SerializationError(f"{what} is a {type(data).__name__}, not bytes")
        data = bytes(data)
    if max_size is not None and len(data) > max_size:
        raise PayloadTooLargeError(
            f"{what} is {len(data)} bytes, over the {max_size}-byte limit for decoding"
        )
    try:
        if not _may_nest(data, max_depth):  # nearly every payload: no accounting needed
            return _unpack(data, _shallow_ext_hook)
        value, depth = _Decoder(max_depth).decode(data)
        if depth > max_depth:
            raise NestingTooDeepError(f"nested {depth} deep, over the limit of {max_depth}")
    except SerializationError as exc:
        raise type(exc)(f"{what} could not be decoded: {exc}") from None
    except msgpack.StackError:
        raise NestingTooDeepError(
            f"{what} could not be decoded: nested deeper than msgpack's own limit"
        ) from None
    except Exception as exc:  # msgpack and the rebuilt classes raise many unrelated types
        raise SerializationError(
            f"{what} could not be decoded: {type(exc).__name__}: {brief(str(exc))}"
        ) from None
    return value


def brief(text: str, limit: int = _TEXT_LIMIT) -> str:
    """Payload-derived text in a message, cut so a hostile payload cannot bloat logs and headers."""
    return text if len(text) <= limit else f"{text[: limit - 30]}... ({len(text)} characters)"


Encoder = Callable[[Any], bytes]
