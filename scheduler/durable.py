"""Durable waiting for workflow code: sleeps, hooks and timeouts that survive restarts.

Nothing waits in memory or in RabbitMQ: a sleep is a wait_created with its due
time and an entry in the Redis timer index; a hook is a hook_created whose token
any producer can resume. They only make sense inside a workflow.
"""

from __future__ import annotations

import datetime as dt
import inspect
from collections.abc import Awaitable
from typing import Any, TypeVar, cast

from ledgerflow.eventlog.delays import delay_seconds
from ledgerflow.eventlog.errors import InvalidArgumentError, LedgerflowError

from .context import current_instance
from .replay import Hook, Webhook, WorkflowInstance

T = TypeVar("T")


def _instance(call: str) -> WorkflowInstance:
    instance = current_instance.get()
    if instance is None:
        raise LedgerflowError(f"{call} can only be used inside a workflow")
    return instance


async def sleep(delay: float | dt.timedelta) -> None:
    """Sleep durably: the wake-up survives every process being killed and restarted.

    A delay that cannot be honoured (NaN, infinite, over 100 years, not a number)
    raises lf.InvalidArgumentError here, in the workflow, which may catch it.
    """
    instance = _instance("lf.sleep()")
    await instance.sleep(delay_seconds(delay, "lf.sleep() delay"))


async def sleep_until(when: dt.datetime) -> None:
    """Sleep durably until ``when`` (timezone-aware), measured on the workflow's clock.

    The wait is recorded with ``when`` as its due time; a time already past returns
    at once. A naive datetime is refused (it means a different instant on each host).
    """
    instance = _instance("lf.sleep_until()")
    if not isinstance(when, dt.datetime):
        raise InvalidArgumentError(f"lf.sleep_until() takes a datetime, not {type(when).__name__}")
    if when.tzinfo is None or when.utcoffset() is None:
        raise InvalidArgumentError(
            "lf.sleep_until() needs a timezone-aware datetime (datetime(..., tzinfo=...))"
        )
    delay_seconds(when - instance.now(), "lf.sleep_until() delay")  # within the bound
    await instance.sleep_until(round(when.timestamp() * 1000))


def create_hook(token: str | None = None, metadata: Any = None) -> Hook:
    """A point where the outside world can send this run data: ``await client.resume_hook``.

    ``token`` defaults to one derived from the run and position; pass your own
    (an order id, say) to make it guessable by the caller: 1-256 printable ASCII
    characters without spaces or "|" (lf.InvalidArgumentError otherwise). Tokens
    are unique among live hooks: a hook whose token another live hook holds is
    recorded as conflicted, and awaiting it raises lf.HookConflictError.
    """
    return _instance("lf.create_hook()").create_hook(token, metadata)


def create_webhook(metadata: Any = None) -> Webhook:
    """A hook the outside world resumes over HTTP, at ``webhook.path``; see ``create_hook``.

    Its token is random (``wh_`` and 32 URL-safe characters), recorded when the hook is,
    so only whoever is given the path can call it. Mount ``ledgerflow.fastapi.router`` (or
    run ``ledgerflow webhooks serve``) to receive the calls.
    """
    return cast(Webhook, _instance("lf.create_webhook()").create_hook(None, metadata, webhook=True))


async def wait_for(awaitable: Awaitable[T], timeout: float | dt.timedelta) -> T:
    """Await with a durable timeout (a timer in the log, not asyncio): raises lf.WaitTimeout."""
    instance = _instance("lf.wait_for()")
    try:
        seconds = delay_seconds(timeout, "lf.wait_for() timeout")
    except InvalidArgumentError:
        if inspect.iscoroutine(awaitable):
            awaitable.close()  # never started: nothing was asked for, nothing to warn about
        raise
    result: T = await instance.wait_for(awaitable, seconds)
    return result
