"""The ``@workflow`` decorator and the registry schedulers look workflows up in."""

from __future__ import annotations

import datetime as dt
import functools
import inspect
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Generic, ParamSpec, TypeVar, overload

from ledgerflow.eventlog.delays import delay_ms
from ledgerflow.eventlog.errors import (
    ConfigurationError,
    InvalidArgumentError,
    UnknownWorkflowError,
)
from ledgerflow.eventlog.retention import retention_ms
from ledgerflow.worker.concurrency import Concurrency
from ledgerflow.worker.naming import Registry, check_arguments

from .context import current_instance

P = ParamSpec("P")
R = TypeVar("R")


@dataclass(frozen=True)
class WorkflowDef:
    name: str
    fn: Callable[..., Coroutine[Any, Any, Any]]
    signature: inspect.Signature | None = field(default=None, compare=False)
    retention_ms: int | None = None  # its runs' own retention; None: the namespace default
    timeout_ms: int | None = None  # how long a run may take from its start; None: no limit
    concurrency: Concurrency | None = None  # at most this many active runs per key

    def check_args(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Fail in the producer, naming the argument, before anything is written."""
        check_arguments(self.signature, args, kwargs, what=f"workflow {self.name!r}")


class WorkflowFunction(Generic[P, R]):
    """What ``@workflow`` returns: pass it to ``client.start``; calling it runs it plainly."""

    def __init__(self, definition: WorkflowDef) -> None:
        self.definition = definition
        functools.update_wrapper(self, definition.fn)

    @property
    def name(self) -> str:
        return self.definition.name

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> Coroutine[Any, Any, R]:
        """Inside a workflow: start a child run and await it. Outside: run the function."""
        instance = current_instance.get()
        if instance is not None:
            return instance.call_child(self.definition, args, kwargs)
        return self.definition.fn(*args, **kwargs)


class WorkflowRegistry(Registry[WorkflowDef]):
    def __init__(self) -> None:
        super().__init__("workflow", UnknownWorkflowError)


workflows = WorkflowRegistry()


@overload
def workflow(fn: Callable[P, Awaitable[R]], /) -> WorkflowFunction[P, R]: ...
@overload
def workflow(
    *,
    name: str | None = None,
    retention: dt.timedelta | None = None,
    timeout: dt.timedelta | float | None = None,
    concurrency: Concurrency | None = None,
) -> Callable[[Callable[P, Awaitable[R]]], WorkflowFunction[P, R]]: ...


def workflow(
    fn: Callable[..., Any] | None = None,
    /,
    *,
    name: str | None = None,
    retention: dt.timedelta | None = None,
    timeout: dt.timedelta | float | None = None,
    concurrency: Concurrency | None = None,
) -> Any:
    """Mark an ``async def`` as a durable workflow, replayed deterministically from its log.

    ``retention``: how long its runs are kept once finished (completed, failed or
    cancelled) before everything of them is removed; 1 second to 100 years. Without
    it the namespace default applies (``LEDGERFLOW_RETENTION``), or none: kept forever.

    ``timeout`` (a timedelta or seconds): a run still going that long after it started
    fails with ``lf.WorkflowTimeoutError``; its child runs are cancelled and its running
    steps see ``lf.step_context().cancelled``. Recorded when a run starts, so changing
    it applies to new runs only.

    ``concurrency=lf.Concurrency(limit, key=...)``: at most ``limit`` active runs per
    key; the others wait created, in order, until one ends (``scheduler/runlimits.py``).
    """
    try:
        kept = None if retention is None else retention_ms(retention, "workflow retention")
        limit = None if timeout is None else delay_ms(timeout, "workflow timeout")
    except InvalidArgumentError as exc:
        raise ConfigurationError(str(exc)) from None
    if limit is not None and limit < 1:
        raise ConfigurationError("workflow timeout must be more than 0 seconds")
    if concurrency is not None and not isinstance(concurrency, Concurrency):
        raise ConfigurationError("workflow concurrency must be lf.Concurrency")

    def register(func: Callable[..., Any]) -> WorkflowFunction[Any, Any]:
        if not inspect.iscoroutinefunction(func):
            raise ConfigurationError(f"workflow {func.__qualname__} must be an `async def`")
        wf_name = name or func.__qualname__
        definition = WorkflowDef(
            name=wf_name,
            fn=func,
            signature=inspect.signature(func),
            retention_ms=kept,
            timeout_ms=limit,
            concurrency=(
                concurrency.bound_to(
                    f"workflow:{name or func.__qualname__}", inspect.signature(func)
                )
                if concurrency is not None
                else None
            ),
        )
        workflows.add(definition)
        return WorkflowFunction(definition)

    if fn is not None:
        return register(fn)
    return register
