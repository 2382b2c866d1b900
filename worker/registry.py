"""The ``@step`` decorator and the registry workers look steps up in."""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Generic, ParamSpec, TypeVar, overload

from ledgerflow.eventlog import codec
from ledgerflow.eventlog.blobs import Blob, offload_paths, offload_threshold
from ledgerflow.eventlog.delays import delay_seconds
from ledgerflow.eventlog.errors import (
    ConfigurationError,
    ExitCalledError,
    InvalidArgumentError,
    SerializationError,
    UnknownStepError,
)
from ledgerflow.eventlog.names import DEFAULT_STEP_QUEUE, check_priority, check_queue_name

from .concurrency import Concurrency
from .dispatch import current_dispatcher
from .naming import Registry, check_arguments
from .ratelimit import RateLimit
from .resources import Resource, WorkerResources, resource_parameters
from .retry import DEFAULT_RETRY, RetryPolicy

P = ParamSpec("P")
R = TypeVar("R")


@dataclass(frozen=True)
class StepDef:
    """A registered step: its wire name, function and execution options."""

    name: str
    fn: Callable[..., Any]
    queue: str = DEFAULT_STEP_QUEUE
    timeout: float | None = None
    max_payload: int = codec.DEFAULT_MAX_PAYLOAD
    retry: RetryPolicy | None = None
    heartbeat_timeout: float | None = None
    signature: inspect.Signature | None = field(default=None, compare=False)
    # Parameters the worker fills with resources (``lf.use``), never recorded or sent.
    resources: dict[str, Resource] = field(default_factory=dict, compare=False)
    # At most this many attempts at once per key, across every worker (worker/concurrency.py).
    concurrency: Concurrency | None = field(default=None, compare=False)
    # At most this many starts per period per key, across every worker (worker/ratelimit.py).
    rate_limit: RateLimit | None = field(default=None, compare=False)
    # 0-3: dispatched before lower ones under load; a run's priority may raise it.
    priority: int = field(default=0, compare=False)

    def encode_args(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bytes:
        """Check and encode a call's arguments, all inline, naming the bad one on failure."""
        return self.encode_call(args, kwargs, threshold=0)[0]

    def encode_call(
        self, args: tuple[Any, ...], kwargs: dict[str, Any], *, threshold: int | None = None
    ) -> tuple[bytes, tuple[Blob, ...]]:
        """Check and encode a call's arguments: (the encoded ``[args, kwargs]``, its blobs).

        Runs at the call site, before anything is written or sent. Arguments over the
        offload threshold (``threshold``, default ``blobs.offload_threshold()``) go out of
        line and the encoding carries their references; what stays inline is held to the
        step's ``max_payload``.
        """
        check_arguments(self.signature, args, kwargs, what=f"step {self.name!r}")
        if self.resources and self.signature is not None:
            bound = self.signature.bind(*args, **kwargs).arguments
            passed = sorted(set(bound) & set(self.resources))
            if passed:
                raise TypeError(
                    f"step {self.name!r} called with {passed[0]!r}, a resource (lf.use): "
                    "the worker provides it; leave it out of the call"
                )
        what = f"arguments of step {self.name!r}"
        value: Any = [list(args), kwargs]
        threshold = offload_threshold() if threshold is None else threshold
        made: list[Blob] = []
        if threshold:
            encoded = codec.encode(value, what=what, max_size=None, envelope=2)
            if len(encoded) <= threshold:
                return self._inline(encoded, value, what), ()
            value, made = offload_paths(value, ((0, "*"), (1, "*")), what=what, threshold=threshold)
        encoded = codec.encode(value, what=what, max_size=self.max_payload, envelope=2)
        return encoded, tuple(made)

    def _inline(self, encoded: bytes, value: Any, what: str) -> bytes:
        if len(encoded) > self.max_payload:  # the usual error, as without offloading
            codec.encode(value, what=what, max_size=self.max_payload, envelope=2)
        return encoded

    @staticmethod
    def decode_args(
        blob: bytes, *, max_size: int = codec.MAX_PAYLOAD
    ) -> tuple[list[Any], dict[str, Any]]:
        """Decode an arguments blob from a queue or a log: SerializationError for anything else.

        ``max_size`` is the step's own ``max_payload`` where the step is known (the
        worker): arguments no producer of this step could have written are refused
        before they are unpacked.
        """
        decoded = codec.decode(blob, what="step arguments", max_size=max_size)
        if (
            not isinstance(decoded, list)
            or len(decoded) != 2
            or not isinstance(decoded[0], list)
            or not isinstance(decoded[1], dict)
        ):
            raise SerializationError("step arguments are not an [args, kwargs] pair")
        if not all(isinstance(key, str) for key in decoded[1]):
            raise SerializationError("step arguments: keyword argument names must be strings")
        return decoded[0], decoded[1]

    async def call_function(self, args: list[Any], kwargs: dict[str, Any]) -> Any:
        """Call the user's function; plain ``def`` steps run in a thread.

        SystemExit from the step's code becomes an ordinary failure here, before it
        reaches a task boundary, where asyncio would let it stop the whole worker.
        """
        try:
            if inspect.iscoroutinefunction(self.fn):
                return await self.fn(*args, **kwargs)
            return await asyncio.to_thread(self.fn, *args, **kwargs)
        except SystemExit as exc:
            raise ExitCalledError(f"step {self.name!r}", exc.code) from None


class StepFunction(Generic[P, R]):
    """What ``@step`` returns: call it inside a workflow to schedule, outside to run."""

    def __init__(self, definition: StepDef) -> None:
        self.definition = definition
        functools.update_wrapper(self, definition.fn)

    @property
    def name(self) -> str:
        return self.definition.name

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> Coroutine[Any, Any, R]:
        dispatcher = current_dispatcher.get()
        if dispatcher is not None:
            return dispatcher.call_step(self.definition, args, kwargs)
        return self._direct(*args, **kwargs)

    async def _direct(self, *args: Any, **kwargs: Any) -> R:
        """Outside a workflow: the step runs here, with its resources opened for this call."""
        if not self.definition.resources:
            plain: R = await self.definition.call_function(list(args), dict(kwargs))
            return plain
        resources = WorkerResources()
        try:
            async with resources.provide(self.definition.resources) as provided:
                result: R = await self.definition.call_function(list(args), {**kwargs, **provided})
                return result
        finally:
            await resources.close()


class StepRegistry(Registry[StepDef]):
    def __init__(self) -> None:
        super().__init__("step", UnknownStepError)
        self.default_retry: RetryPolicy = DEFAULT_RETRY

    def retry_policy_for(self, name: str, fallback: RetryPolicy | None = None) -> RetryPolicy:
        """The step's own policy, else the worker's, else the app default."""
        definition = self.find(name)
        if definition is not None and definition.retry is not None:
            return definition.retry
        return fallback or self.default_retry

    def queues(self) -> list[str]:
        return sorted({d.queue for d in self})


steps = StepRegistry()


@overload
def step(fn: Callable[P, Awaitable[R]], /) -> StepFunction[P, R]: ...
@overload
def step(fn: Callable[P, R], /) -> StepFunction[P, R]: ...
@overload
def step(
    *,
    name: str | None = None,
    queue: str = DEFAULT_STEP_QUEUE,
    timeout: float | None = None,
    heartbeat_timeout: float | None = None,
    retry: RetryPolicy | None = None,
    max_payload: int = codec.DEFAULT_MAX_PAYLOAD,
    concurrency: Concurrency | None = None,
    rate_limit: RateLimit | None = None,
    priority: int = 0,
) -> Callable[[Callable[P, Any]], StepFunction[P, Any]]: ...


def step(
    fn: Callable[..., Any] | None = None,
    /,
    *,
    name: str | None = None,
    queue: str = DEFAULT_STEP_QUEUE,
    timeout: float | None = None,
    heartbeat_timeout: float | None = None,
    retry: RetryPolicy | None = None,
    max_payload: int = codec.DEFAULT_MAX_PAYLOAD,
    concurrency: Concurrency | None = None,
    rate_limit: RateLimit | None = None,
    priority: int = 0,
) -> Any:
    """Mark a function as a step: run at least once by a worker, its result recorded once.

    ``concurrency=lf.Concurrency(limit, key=...)``: at most ``limit`` attempts of it at
    once per key across every worker; the others wait, in order, parked in Redis.
    ``rate_limit=lf.RateLimit(rate, per=..., key=...)``: at most ``rate`` starts per
    period per key; a step over it waits for its turn in the timer index.
    """

    def register(func: Callable[..., Any]) -> StepFunction[Any, Any]:
        for label, limit in (("timeout", timeout), ("heartbeat_timeout", heartbeat_timeout)):
            if limit is None:
                continue
            try:
                seconds = delay_seconds(limit, f"step {func.__qualname__}: {label}")
            except InvalidArgumentError as exc:
                raise ConfigurationError(str(exc)) from None
            if seconds <= 0:
                raise ConfigurationError(f"step {func.__qualname__}: {label} must be positive")
        if not 1 <= max_payload <= codec.MAX_PAYLOAD:
            # Its arguments travel in one queue message, which has a ceiling of its own.
            raise ConfigurationError(
                f"step {func.__qualname__}: max_payload must be between 1 and "
                f"{codec.MAX_PAYLOAD} bytes, got {max_payload}"
            )
        if concurrency is not None and not isinstance(concurrency, Concurrency):
            raise ConfigurationError(
                f"step {func.__qualname__}: concurrency must be lf.Concurrency"
            )
        try:
            level = check_priority(priority)
        except InvalidArgumentError as exc:
            raise ConfigurationError(f"step {func.__qualname__}: {exc}") from None
        if rate_limit is not None and not isinstance(rate_limit, RateLimit):
            raise ConfigurationError(f"step {func.__qualname__}: rate_limit must be lf.RateLimit")
        step_name = name or func.__qualname__
        definition = StepDef(
            name=step_name,
            fn=func,
            queue=check_queue_name(queue),
            timeout=timeout,
            heartbeat_timeout=heartbeat_timeout,
            retry=retry,
            max_payload=max_payload,
            signature=inspect.signature(func),
            resources=resource_parameters(inspect.signature(func)),
            concurrency=(
                concurrency.bound_to(step_name, inspect.signature(func))
                if concurrency is not None
                else None
            ),
            rate_limit=(
                rate_limit.bound_to(step_name, inspect.signature(func))
                if rate_limit is not None
                else None
            ),
            priority=level,
        )
        steps.add(definition)
        return StepFunction(definition)

    if fn is not None:
        return register(fn)
    return register


def set_default_retry(policy: RetryPolicy) -> None:
    """The app-wide retry policy for steps that do not name their own."""
    steps.default_retry = policy
