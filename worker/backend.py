"""Connect the two backends every process needs, from one Settings."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from broker import Broker, MemoryBroker, RabbitBroker
from eventlog.errors import ServiceUnavailableError
from eventlog.memory_store import MemoryEventStore
from eventlog.names import Names
from eventlog.redis_store import RedisEventStore
from eventlog.settings import Settings
from eventlog.store import EventStore


@dataclass(frozen=True)
class Backends:
    store: EventStore
    broker: Broker
    names: Names


@asynccontextmanager
async def connect(settings: Settings) -> AsyncIterator[Backends]:
    """Redis and RabbitMQ, checked up front so a missing server is one clear error."""
    names = Names(settings.namespace)
    store = RedisEventStore.from_url(settings.redis_url, names)
    broker = RabbitBroker(settings.amqp_url, names)
    try:
        await store.ping()
        try:
            await broker.connect()
        except ServiceUnavailableError:
            raise
        except Exception as exc:
            raise ServiceUnavailableError(
                f"RabbitMQ at {settings.amqp_url} is not reachable: {exc}"
            ) from exc
        yield Backends(store=store, broker=broker, names=names)
    finally:
        await broker.close()
        await store.close()


@asynccontextmanager
async def in_memory(namespace: str) -> AsyncIterator[Backends]:
    names = Names(namespace)
    store = MemoryEventStore(names)
    broker = MemoryBroker(names)
    await broker.connect()
    try:
        yield Backends(store=store, broker=broker, names=names)
    finally:
        await broker.close()
        await store.close()
