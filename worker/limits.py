"""Run a step under its limits: start-to-close timeout and heartbeat timeout.

The step runs as its own task so the worker can stop waiting for it and record
a retryable failure; an ``async`` step is cancelled, a thread-run ``def`` step
cannot be and is abandoned (its late result is never recorded: the attempt has
already failed).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable
from typing import Any

from ledgerflow.eventlog.errors import HeartbeatTimeoutError, StepTimeoutError


class Beats:
    """The last heartbeat of one running step, by this process's monotonic clock."""

    def __init__(self) -> None:
        self.last = time.monotonic()
        self.count = 0

    def beat(self) -> None:
        self.last = time.monotonic()
        self.count += 1


async def run_limited(
    call: Awaitable[Any],
    *,
    timeout: float | None,
    heartbeat_timeout: float | None,
    beats: Beats,
    step_name: str,
) -> Any:
    if timeout is None and heartbeat_timeout is None:
        return await call
    task = asyncio.ensure_future(call)
    started = time.monotonic()
    try:
        while True:
            now = time.monotonic()
            limits = []
            if timeout is not None:
                limits.append(started + timeout - now)
            if heartbeat_timeout is not None:
                limits.append(beats.last + heartbeat_timeout - now)
            wait = max(0.0, min(limits))
            done, _ = await asyncio.wait({task}, timeout=wait)
            if done:
                return task.result()
            now = time.monotonic()
            if timeout is not None and now - started >= timeout:
                raise StepTimeoutError(f"step {step_name!r} exceeded its {timeout:g} s timeout")
            if heartbeat_timeout is not None and now - beats.last >= heartbeat_timeout:
                raise HeartbeatTimeoutError(
                    f"step {step_name!r} sent no heartbeat for {heartbeat_timeout:g} s"
                )
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(asyncio.shield(task), 1.0)
