"""What steps and workflows share: a registry by name, and call-site argument checks."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from typing import Any, Generic, Protocol, TypeVar

from ledgerflow.eventlog import codec
from ledgerflow.eventlog.errors import ConfigurationError


class Named(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def fn(self) -> Callable[..., Any]: ...


D = TypeVar("D", bound=Named)


def origin(fn: Callable[..., Any]) -> str:
    return f"{fn.__module__}.{fn.__qualname__}"


def check_arguments(
    signature: inspect.Signature | None,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    *,
    what: str,
) -> None:
    """Bind a call to its signature and encode each argument, naming the bad one.

    Runs at the call site, so a wrong arity or an unserializable value fails in
    the caller's code, before anything is written or sent.
    """
    if signature is None:
        return
    try:
        bound = signature.bind(*args, **kwargs)
    except TypeError as exc:
        raise TypeError(f"{what} called with bad arguments: {exc}") from None
    for param, value in bound.arguments.items():
        codec.encode(value, what=f"argument {param!r} of {what}", max_size=None)


class Registry(Generic[D]):
    """Definitions by wire name; one name, one function (or a clear error)."""

    def __init__(self, kind: str, missing: Callable[[str], Exception]) -> None:
        self._kind = kind
        self._missing = missing
        self._items: dict[str, D] = {}

    def add(self, definition: D) -> None:
        existing = self._items.get(definition.name)
        if existing is not None and origin(existing.fn) != origin(definition.fn):
            raise ConfigurationError(
                f"two different functions are registered as {self._kind} {definition.name!r}: "
                f"{origin(existing.fn)} and {origin(definition.fn)}; pass name= to one"
            )
        self._items[definition.name] = definition

    def get(self, name: str) -> D:
        try:
            return self._items[name]
        except KeyError:
            raise self._missing(
                f"no {self._kind} named {name!r} is registered in this process "
                f"(known: {', '.join(sorted(self._items)) or 'none'})"
            ) from None

    def find(self, name: str) -> D | None:
        return self._items.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[D]:
        return iter(list(self._items.values()))

    def names(self) -> list[str]:
        return sorted(self._items)
