"""Connect the two backends every process needs, from one Settings."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from ledgerflow.broker import Broker, MemoryBroker, RabbitBroker
from ledgerflow.broker.topology import quorum_size_from_env
from ledgerflow.broker.urls import amqp_urls
from ledgerflow.eventlog.durability import Durability
from ledgerflow.eventlog.errors import ConfigurationError, LedgerflowError, ServiceUnavailableError
from ledgerflow.eventlog.memory_store import MemoryEventStore
from ledgerflow.eventlog.names import Names
from ledgerflow.eventlog.redis_client import REDIS_SCHEMES, RedisClient
from ledgerflow.eventlog.redis_store import RedisEventStore
from ledgerflow.eventlog.settings import Settings
from ledgerflow.eventlog.store import EventStore
from ledgerflow.eventlog.urls import check_url, redact, redact_text


@dataclass(frozen=True)
class Backends:
    store: EventStore
    broker: Broker
    names: Names
    redis: RedisClient | None = None
    """The Redis client behind the store, for what needs Redis itself (the reconciler's
    lease); None for the in-memory backends. Asked for by capability, never by the
    store's class."""


@asynccontextmanager
async def connect(settings: Settings) -> AsyncIterator[Backends]:
    """Redis and RabbitMQ, checked up front so a missing server is one clear error.

    A malformed URL, a refused login or a queue declared with other settings is a
    ConfigurationError (fix the deployment); only a server that cannot be reached
    is a ServiceUnavailableError. Either way the message shows the URL redacted.

    The AMQP URL may list a RabbitMQ cluster's nodes, comma-separated: each is
    checked here, and the broker fails over between them (``broker/rabbitmq.py``).
    """
    check_url(settings.redis_url, REDIS_SCHEMES, "Redis")
    urls = amqp_urls(settings.amqp_url)
    names = Names(settings.namespace)
    durability = Durability.parse(settings.redis_durability)
    store = redis_store(settings.redis_url, names, durability)
    broker = RabbitBroker(urls, names, quorum_size=quorum_size_from_env())
    try:
        await store.ping()
        names = await store.adopt_layout()
        try:
            await broker.connect()
        except LedgerflowError:
            raise
        except Exception as exc:
            detail = redact_text(f"{type(exc).__name__}: {exc}", urls)
            raise ServiceUnavailableError(
                f"RabbitMQ at {redact(settings.amqp_url)} is not reachable: {detail}"
            ) from exc
        yield Backends(store=store, broker=broker, names=names, redis=store.client)
    finally:
        await broker.close()
        await store.close()


def redis_store(url: str, names: Names, durability: Durability | None = None) -> RedisEventStore:
    """The store for ``url``; redis-py's complaints about its options become one clear error."""
    try:
        return RedisEventStore.from_url(url, names, durability=durability)
    except (ValueError, TypeError) as exc:
        detail = redact_text(str(exc), [url])
        raise ConfigurationError(f"Redis URL {redact(url)!r} is not usable: {detail}") from exc


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
