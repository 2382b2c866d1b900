"""Everything in one process on the in-memory backends: for newcomers and unit tests.

Not a substitute for the real servers: nothing here survives the process.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

from ledgerflow.broker import Broker
from ledgerflow.eventlog.store import EventStore
from ledgerflow.worker.backend import in_memory
from ledgerflow.worker.service import Worker

from .client import Client
from .schedules import schedules
from .service import Scheduler


@asynccontextmanager
async def serving(
    store: EventStore,
    broker: Broker,
    *,
    concurrency: int = 16,
    scheduler: Mapping[str, Any] | None = None,
) -> AsyncIterator[Client]:
    """A worker and a scheduler in this process on the given backends, and a client.

    ``scheduler`` holds options for the Scheduler (``cache_size``, ``history``,
    ``schedules`` for the code's ``lf.schedule`` declarations ...).
    Both are stopped on the way out, whatever happened inside.
    """
    worker = Worker(store, broker, concurrency=concurrency)
    replayer = Scheduler(store, broker, **dict(scheduler or {}))
    await worker.start()
    await replayer.start()
    try:
        yield Client(store, broker)
    finally:
        await replayer.stop()
        await worker.stop()


@asynccontextmanager
async def embedded(
    namespace: str = "ledgerflow", *, concurrency: int = 16
) -> AsyncIterator[Client]:
    """Everything in this process, in memory; the code's ``lf.schedule`` declarations fire too."""
    async with (
        in_memory(namespace) as backends,
        serving(
            backends.store,
            backends.broker,
            concurrency=concurrency,
            scheduler={"schedules": schedules},
        ) as client,
    ):
        yield client
