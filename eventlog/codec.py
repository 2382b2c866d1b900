"""msgpack codec for every payload ledgerflow stores or sends.

Never pickle: a payload from a queue or a stream must not be able to run code
when it is decoded. Rich types travel as msgpack extension types; user classes
travel by a stable type name and are rebuilt only if that name is registered
(``@serializable``) or names a dataclass or pydantic model already imported in
the decoding process — decoding never imports a module.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import datetime as dt
import decimal
import itertools
import sys
import uuid
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import msgpack

from .errors import PayloadTooLargeError, SerializationError

DEFAULT_MAX_PAYLOAD = 1024 * 1024

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

T = TypeVar("T", bound=type)

_registry: dict[str, type] = {}
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


@contextlib.contextmanager
def inspecting() -> Iterator[None]:
    """Decode objects of unknown classes as ``Unregistered`` in this context (read-only tools)."""
    token = _inspecting.set(True)
    try:
        yield
    finally:
        _inspecting.reset(token)


_names: dict[type, str] = {}


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
    klass = _registry.get(type_name)
    if klass is not None:
        return klass
    # Only classes whose module is already imported: decoding never imports code.
    for split in range(type_name.count("."), 0, -1):
        parts = type_name.split(".")
        module_name, qualname = ".".join(parts[:split]), ".".join(parts[split:])
        module = sys.modules.get(module_name)
        if module is None:
            continue
        obj: Any = module
        for attr in qualname.split("."):
            obj = getattr(obj, attr, None)
            if obj is None:
                break
        if isinstance(obj, type) and (dataclasses.is_dataclass(obj) or _is_pydantic(obj)):
            return obj
    raise SerializationError(
        f"cannot decode an instance of {type_name!r}: the class is not registered with "
        "@lf.serializable and no imported module defines it"
    )


def _object_state(value: Any) -> dict[str, Any]:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    if _is_pydantic(type(value)):
        state: dict[str, Any] = value.model_dump(mode="python")
        return state
    encoded: dict[str, Any] = value.__lf_encode__()
    return encoded


def _rebuild(klass: type, state: dict[str, Any]) -> Any:
    if dataclasses.is_dataclass(klass):
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


def _default(value: Any) -> msgpack.ExtType:
    if isinstance(value, dt.datetime):
        return msgpack.ExtType(_EXT_DATETIME, _packb(value.isoformat()))
    if isinstance(value, dt.date):
        return msgpack.ExtType(_EXT_DATE, _packb(value.isoformat()))
    if isinstance(value, dt.time):
        return msgpack.ExtType(_EXT_TIME, _packb(value.isoformat()))
    if isinstance(value, dt.timedelta):
        return msgpack.ExtType(
            _EXT_TIMEDELTA, _packb([value.days, value.seconds, value.microseconds])
        )
    if isinstance(value, decimal.Decimal):
        return msgpack.ExtType(_EXT_DECIMAL, str(value).encode())
    if isinstance(value, uuid.UUID):
        return msgpack.ExtType(_EXT_UUID, value.bytes)
    if isinstance(value, tuple) and not hasattr(value, "_fields"):
        return msgpack.ExtType(_EXT_TUPLE, _packb(list(value)))
    if isinstance(value, frozenset):
        return msgpack.ExtType(_EXT_FROZENSET, _packb(_sorted_items(value)))
    if isinstance(value, set):
        return msgpack.ExtType(_EXT_SET, _packb(_sorted_items(value)))
    klass = type(value)
    if _is_object(value):
        return msgpack.ExtType(_EXT_OBJECT, _packb([_type_name(klass), _object_state(value)]))
    raise TypeError(f"cannot serialize {klass.__qualname__}")


def _sorted_items(items: set[Any] | frozenset[Any]) -> list[Any]:
    """Sets go out in a stable order so equal values encode to equal bytes (fingerprints)."""
    try:
        ordered = sorted(items)
        if all(a < b for a, b in itertools.pairwise(ordered)):
            return ordered
    except TypeError:
        pass
    # Mixed types, or a partial order (sets of sets, NaN) where sorted() depends on the
    # iteration order: order by each item's encoding, a total order equal items share.
    return sorted(items, key=_packb)


def _ext_hook(code: int, data: bytes) -> Any:
    if code == _EXT_DATETIME:
        return dt.datetime.fromisoformat(_unpackb(data))
    if code == _EXT_DATE:
        return dt.date.fromisoformat(_unpackb(data))
    if code == _EXT_TIME:
        return dt.time.fromisoformat(_unpackb(data))
    if code == _EXT_TIMEDELTA:
        days, seconds, micros = _unpackb(data)
        return dt.timedelta(days=days, seconds=seconds, microseconds=micros)
    if code == _EXT_DECIMAL:
        return decimal.Decimal(data.decode())
    if code == _EXT_UUID:
        return uuid.UUID(bytes=data)
    if code == _EXT_TUPLE:
        return tuple(_unpackb(data))
    if code == _EXT_SET:
        return set(_unpackb(data))
    if code == _EXT_FROZENSET:
        return frozenset(_unpackb(data))
    if code == _EXT_OBJECT:
        type_name, state = _unpackb(data)
        try:
            klass = _lookup(type_name)
        except SerializationError:
            if _inspecting.get():
                return Unregistered(type_name, state)
            raise
        return _rebuild(klass, state)
    return msgpack.ExtType(code, data)


def _packb(value: Any) -> bytes:
    packed: bytes = msgpack.packb(value, default=_default, use_bin_type=True, strict_types=True)
    return packed


def _unpackb(data: bytes) -> Any:
    return msgpack.unpackb(data, ext_hook=_ext_hook, raw=False, strict_map_key=False)


def find_unserializable(value: Any, path: str = "value") -> tuple[str, type] | None:
    """Walk a value to name the first part msgpack cannot carry (for the error message)."""
    # Exact types, as msgpack's strict_types packs them: subclasses (OrderedDict, IntEnum,
    # namedtuple) are not carried and must be named here, not passed over.
    if value is None or type(value) in (bool, int, float, str, bytes, bytearray, memoryview):
        return None
    if isinstance(value, (dt.datetime, dt.date, dt.time, dt.timedelta, decimal.Decimal, uuid.UUID)):
        return None
    if type(value) is dict:
        for key, item in value.items():
            found = find_unserializable(key, f"{path} key {key!r}") or find_unserializable(
                item, f"{path}[{key!r}]"
            )
            if found:
                return found
        return None
    if (
        type(value) is list
        or isinstance(value, (set, frozenset))
        or (isinstance(value, tuple) and not hasattr(value, "_fields"))
    ):
        for index, item in enumerate(value):
            found = find_unserializable(item, f"{path}[{index}]")
            if found:
                return found
        return None
    klass = type(value)
    if _is_object(value):
        for key, item in _object_state(value).items():
            found = find_unserializable(item, f"{path}.{key}")
            if found:
                return found
        return None
    return path, klass


def encode(value: Any, *, what: str = "value", max_size: int | None = DEFAULT_MAX_PAYLOAD) -> bytes:
    """Encode a payload; ``what`` names it in errors (e.g. "argument 'order' of step 'charge'")."""
    try:
        data = _packb(value)
    except (TypeError, ValueError, OverflowError) as exc:
        found = find_unserializable(value, what)
        if found is not None:
            where, klass = found
            raise SerializationError(
                f"{where} is of type {klass.__module__}.{klass.__qualname__}, which ledgerflow "
                "cannot serialize; use plain data, a dataclass, a pydantic model, or register "
                "the class with @lf.serializable"
            ) from None
        raise SerializationError(f"{what} cannot be serialized: {exc}") from exc
    if max_size is not None and len(data) > max_size:
        raise PayloadTooLargeError(
            f"{what} is {len(data)} bytes encoded, over the {max_size}-byte payload limit; "
            "store large data elsewhere and pass a reference"
        )
    return data


def decode(data: bytes, *, what: str = "payload") -> Any:
    try:
        return _unpackb(data)
    except SerializationError:
        raise
    except Exception as exc:
        raise SerializationError(f"{what} could not be decoded: {exc}") from exc


def registered_types() -> dict[str, type]:
    return dict(_registry)


Encoder = Callable[[Any], bytes]
