"""Retrying infrastructure calls: ride out a broker restart or a dropped connection.

Publishes are safe to repeat (a duplicate step message or activation is
harmless by construction), and so are appends (a repeat is a duplicate), so
they are retried with backoff and a structured warning per attempt, never in a
busy loop, before the error is allowed to surface (and the message being
handled goes back to its queue). A Redis Cluster's failover (a master killed,
its replica promoted a few seconds later) is one more such outage.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar, cast

import structlog
from redis.exceptions import (
    AskError,
    BusyLoadingError,
    ClusterError,
    OutOfMemoryError,
    ReadOnlyError,
    SlotNotCoveredError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_delay,
    wait_exponential,
    wait_random,
)

from .errors import BrokerError, ServiceUnavailableError

log = structlog.get_logger("ledgerflow.retrying")

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Coroutine[Any, Any, Any]])

TRANSIENT: tuple[type[BaseException], ...] = (
    BrokerError,
    ServiceUnavailableError,
    RedisConnectionError,
    RedisTimeoutError,
    # Redis refusing writes for a while: full (maxmemory), loading its data after a
    # restart, a replica during a failover. Waited out like a dropped connection,
    # never mistaken for a bad value (a run is failed for those).
    OutOfMemoryError,
    BusyLoadingError,
    ReadOnlyError,
    TryAgainError,
    # A Redis Cluster between a master's death and its replica's promotion:
    # CLUSTERDOWN and MASTERDOWN (ClusterError), a slot nobody serves yet, a
    # redirect redis-py gave up following (MOVED is an AskError). Its client
    # retries these a few times itself; a failover outlasts that.
    ClusterError,
    SlotNotCoveredError,
    AskError,
    ConnectionError,
    TimeoutError,
    OSError,
)
RETRY_FOR = 60.0

_REDIS_CONNECTION = "redis/asyncio/connection.py"
_TRANSPORT = (_REDIS_CONNECTION, "asyncio/streams.py", "asyncio/selector_events.py")


def torn_connection(exc: BaseException) -> bool:
    """A connection closed under redis-py while it wrote, raised as a bare Python error.

    redis-py (8.1, redis/redis-py#4287) lets ``'NoneType' object has no attribute
    'writelines'`` (an AttributeError; a TypeError on Python 3.12+) escape when a socket
    is torn down mid-write, as a cluster client does to every node's connections when
    it rediscovers the cluster during a failover. Recognised by where it was raised:
    in redis-py's connection module, or in asyncio's transport under it. Any other
    AttributeError or TypeError is a bug, and is not retried.
    """
    if not isinstance(exc, (AttributeError, TypeError)):
        return False
    files = []
    tb = exc.__traceback__
    while tb is not None:
        files.append(tb.tb_frame.f_code.co_filename.replace("\\", "/"))
        tb = tb.tb_next
    return (
        bool(files)
        and files[-1].endswith(_TRANSPORT)
        and any(f.endswith(_REDIS_CONNECTION) for f in files)
    )


def is_transient(exc: BaseException) -> bool:
    """Will trying again (after a pause) plausibly succeed? Infrastructure, not data."""
    return isinstance(exc, TRANSIENT) or torn_connection(exc)


def _warn(what: str) -> Callable[[RetryCallState], None]:
    def before_sleep(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome is not None else None
        log.warning(
            "infrastructure call failed; retrying",
            what=what,
            attempt=state.attempt_number,
            error=f"{type(error).__name__}: {error}",
            next_in=round(state.upcoming_sleep, 2),
        )

    return before_sleep


async def retrying(what: str, call: Callable[[], Awaitable[T]], *, for_s: float = RETRY_FOR) -> T:
    """Run ``call`` until it succeeds or ``for_s`` seconds of transient failures pass."""
    async for attempt in AsyncRetrying(
        retry=retry_if_exception(is_transient),
        wait=wait_exponential(multiplier=0.1, max=5.0) + wait_random(0, 0.1),
        stop=stop_after_delay(for_s),
        before_sleep=_warn(what),
        reraise=True,
    ):
        with attempt:
            return await call()
    raise AssertionError("unreachable: tenacity reraises")


def retried(what: str, *, for_s: float = RETRY_FOR) -> Callable[[F], F]:
    """Decorate an async method so transient infrastructure errors are retried."""

    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            return await retrying(what, lambda: fn(*args, **kwargs), for_s=for_s)

        return cast(F, wrapper)

    return decorate
