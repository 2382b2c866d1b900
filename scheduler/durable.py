"""Durable waiting for workflow code: sleeps, hooks and timeouts that survive restarts.

Nothing waits in memory or in RabbitMQ: a sleep is a wait_created with its due
time and an entry in the Redis timer index; a hook is a hook_created whose token
any producer can resume. They only make sense inside a workflow.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable
from typing import Any, TypeVar

from eventlog.errors import LedgerflowError

from .context import current_instance
from .replay import Hook, WorkflowInstance

T = TypeVar("T")


def _instance(call: str) -> WorkflowInstance:
    instance = current_instance.get()
    if instance is None:
        raise LedgerflowError(f"{call} can only be used inside a workflow")
    return instance


def _seconds(delay: float | dt.timedelta) -> float:
    return delay.total_seconds() if isinstance(delay, dt.timedelta) else float(delay)


async def sleep(delay: float | dt.timedelta) -> None:
    """Sleep durably: the wake-up survives every process being killed and restarted."""
    await _instance("lf.sleep()").sleep(_seconds(delay))


def create_hook(token: str | None = None, metadata: Any = None) -> Hook:
    """A point where the outside world can send this run data: ``await client.resume_hook``.

    ``token`` defaults to one derived from the run and position; pass your own
    (an order id, say) to make it guessable by the caller. Tokens are unique
    among live hooks.
    """
    return _instance("lf.create_hook()").create_hook(token, metadata)


async def wait_for(awaitable: Awaitable[T], timeout: float | dt.timedelta) -> T:
    """Await with a durable timeout (a timer in the log, not asyncio): raises lf.WaitTimeout."""
    result: T = await _instance("lf.wait_for()").wait_for(awaitable, _seconds(timeout))
    return result
