"""Resources a step receives as a parameter instead of an argument: pools, clients, sessions.

A database pool is not a value to record in a run's log or to send in a step
message: it is something the worker has. ``@lf.resource`` declares how to open and
close one (an async generator, or a function returning an async context manager),
and a step asks for it with a parameter default, ``pool: Pool = lf.use(db_pool)``:
the parameter is left out of the recorded arguments, and the worker fills it in.

Scopes: ``worker`` (the default) is opened once per worker process, on first use,
and closed when the worker stops; ``attempt`` is opened for each attempt and closed
when the attempt ends, however it ends (a result, an exception, its timeout, a
cancellation, the worker's shutdown), because the step's call runs inside it. A
resource that fails to open fails the attempt with ``ResourceUnavailableError``
naming it, which is retried like any step failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from dataclasses import dataclass
from typing import Any, Literal, overload

from ledgerflow.eventlog.errors import ConfigurationError, ResourceUnavailableError

Scope = Literal["worker", "attempt"]
SCOPES: tuple[Scope, ...] = ("worker", "attempt")


@dataclass(frozen=True, eq=False)
class Resource:
    """A declared resource: its name, scope and how to open it (``open()`` is an async CM)."""

    name: str
    scope: Scope
    open: Callable[[], AbstractAsyncContextManager[Any]]

    def __repr__(self) -> str:
        return f"Resource({self.name!r}, scope={self.scope!r})"


@dataclass(frozen=True)
class Use:
    """The default of a step parameter the worker fills with ``resource``."""

    resource: Resource

    def __repr__(self) -> str:
        return f"lf.use({self.resource.name})"


@overload
def resource(fn: Callable[..., Any], /) -> Resource: ...
@overload
def resource(
    *, name: str | None = None, scope: Scope = "worker"
) -> Callable[[Callable[..., Any]], Resource]: ...


def resource(
    fn: Callable[..., Any] | None = None, /, *, name: str | None = None, scope: Scope = "worker"
) -> Any:
    """Declare a resource from an async generator (one ``yield``) or an async CM factory."""
    if scope not in SCOPES:
        raise ConfigurationError(f"resource scope must be one of {SCOPES}, got {scope!r}")

    def declare(func: Callable[..., Any]) -> Resource:
        opener: Callable[[], AbstractAsyncContextManager[Any]]
        if inspect.isasyncgenfunction(func):
            opener = contextlib.asynccontextmanager(func)
        elif callable(func):
            opener = func
        else:
            raise ConfigurationError(f"@lf.resource needs a function, got {func!r}")
        return Resource(name or func.__qualname__, scope, opener)

    return declare(fn) if fn is not None else declare


def use(declared: Resource) -> Any:
    """A step parameter's default: ``pool: Pool = lf.use(db_pool)``; the worker fills it in."""
    if not isinstance(declared, Resource):
        raise ConfigurationError(f"lf.use() takes an @lf.resource, got {declared!r}")
    return Use(declared)


def resource_parameters(signature: inspect.Signature) -> dict[str, Resource]:
    """The parameters of a step that are resources, by name."""
    return {
        name: param.default.resource
        for name, param in signature.parameters.items()
        if isinstance(param.default, Use)
    }


class WorkerResources:
    """The worker-scoped resources of one process: opened once on first use, closed at stop."""

    def __init__(self) -> None:
        self._stack = AsyncExitStack()
        self._opened: dict[Resource, Any] = {}
        self._lock = asyncio.Lock()
        self._closed = False

    async def get(self, declared: Resource) -> Any:
        if declared in self._opened:
            return self._opened[declared]
        async with self._lock:
            if declared not in self._opened:
                if self._closed:
                    raise ResourceUnavailableError(
                        f"resource {declared.name!r}: the worker is stopping"
                    )
                self._opened[declared] = await _enter(self._stack, declared)
            return self._opened[declared]

    async def close(self) -> None:
        """Close every worker-scoped resource, the last opened first."""
        async with self._lock:
            self._closed = True
            self._opened.clear()
            await self._stack.aclose()

    @contextlib.asynccontextmanager
    async def provide(self, wanted: Mapping[str, Resource]) -> AsyncIterator[dict[str, Any]]:
        """The values for a step's resource parameters, for the length of one attempt."""
        async with AsyncExitStack() as attempt:
            values = {}
            for param, declared in wanted.items():
                if declared.scope == "worker":
                    values[param] = await self.get(declared)
                else:
                    values[param] = await _enter(attempt, declared)
            yield values


async def _enter(stack: AsyncExitStack, declared: Resource) -> Any:
    """Open ``declared`` on ``stack``; a failure to open names the resource."""
    try:
        return await stack.enter_async_context(declared.open())
    except (asyncio.CancelledError, KeyboardInterrupt, SystemExit):
        raise
    except Exception as exc:
        raise ResourceUnavailableError(
            f"resource {declared.name!r} could not be opened: {type(exc).__name__}: {exc}"
        ) from exc
