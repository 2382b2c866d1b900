"""Everything in one process on the in-memory backends: for newcomers and unit tests.

Not a substitute for the real servers: nothing here survives the process.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from ledgerflow.worker.backend import in_memory
from ledgerflow.worker.service import Worker

from .client import Client
from .service import Scheduler


@asynccontextmanager
async def embedded(
    namespace: str = "ledgerflow", *, concurrency: int = 16
) -> AsyncIterator[Client]:
    async with in_memory(namespace) as backends:
        worker = Worker(backends.store, backends.broker, concurrency=concurrency)
        scheduler = Scheduler(backends.store, backends.broker)
        await worker.start()
        await scheduler.start()
        try:
            yield Client(backends.store, backends.broker)
        finally:
            await scheduler.stop()
            await worker.stop()
