"""A scheduler's background loop (timers, schedules): started once, stopped for good.

Stopping sets a flag as well as cancelling the task: a client library that turns a
cancellation into a connection error must not keep a loop alive.
"""

from __future__ import annotations

import asyncio
import contextlib
from abc import ABC, abstractmethod

STOP_TIMEOUT = 5.0


class BackgroundLoop(ABC):
    task_name = "ledgerflow-loop"

    def __init__(self) -> None:
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    def start(self) -> None:
        if self._task is None:
            self._stopping = False
            self._task = asyncio.create_task(self._run(), name=self.task_name)

    async def stop(self) -> None:
        self._stopping = True
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, TimeoutError):
            await asyncio.wait_for(task, STOP_TIMEOUT)

    @abstractmethod
    async def _run(self) -> None:
        """Loop until ``self._stopping``."""
