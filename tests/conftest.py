"""Shared fixtures: real servers, one namespace per test, cleanup of what a test made."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

# Hypothesis times garbage collection with the time.perf_counter it finds at import. Imported
# here, before any test module installs the workflow sandbox's clock guard, it keeps the real
# one: otherwise a collection that happens inside workflow code makes its timer raise (only an
# unraisable-exception warning, but a misleading one).
import hypothesis  # noqa: F401
import pytest
import redis as sync_redis
import redis.asyncio as aioredis
from ledgerflow.eventlog.names import Names

from ledgerflow.testing.namespace import delete_queues, delete_redis_keys
from tests.servers import HOW_TO_START, Servers, configured, docker_running, reachable


@pytest.fixture(scope="session")
def servers() -> Iterator[Servers]:
    wanted = configured()
    if reachable(wanted.amqp_url, 5672) and reachable(wanted.redis_url, 6379):
        _export(wanted)
        yield wanted
        return
    if docker_running():
        from testcontainers.rabbitmq import RabbitMqContainer
        from testcontainers.redis import RedisContainer

        with (
            RabbitMqContainer("rabbitmq:3.13-management") as rabbit,
            RedisContainer("redis:7") as red,
        ):
            amqp = (
                f"amqp://guest:guest@{rabbit.get_container_host_ip()}:"
                f"{rabbit.get_exposed_port(5672)}/"
            )
            rurl = f"redis://{red.get_container_host_ip()}:{red.get_exposed_port(6379)}/0"
            found = Servers(amqp_url=amqp, redis_url=rurl)
            _export(found)
            yield found
        return
    pytest.fail(
        f"RabbitMQ at {wanted.amqp_url} or Redis at {wanted.redis_url} is not reachable "
        f"and no Docker engine runs for testcontainers.\n{HOW_TO_START}",
        pytrace=False,
    )


def _export(found: Servers) -> None:
    """Steps and subprocesses started by tests find the same servers."""
    os.environ["LEDGERFLOW_AMQP_URL"] = found.amqp_url
    os.environ["LEDGERFLOW_REDIS_URL"] = found.redis_url


@pytest.fixture
def namespace(request: pytest.FixtureRequest) -> Iterator[str]:
    """A namespace no other test uses, so keys and queues never collide.

    A test on the servers leaves none of its keys behind, even one that never asked for
    ``redis_client``: a CLI process it ran records the namespace's layout on connecting
    (``<ns>:meta``). This teardown runs after every fixture that uses the namespace.
    """
    chosen = f"t{uuid.uuid4().hex[:12]}"
    yield chosen
    if "servers" in request.fixturenames:
        url = request.getfixturevalue("servers").redis_url
        with sync_redis.Redis.from_url(url) as client:
            stale = list(client.scan_iter(match=f"{chosen}:*", count=1000))
            if stale:
                client.unlink(*stale)


@pytest.fixture
def names(namespace: str) -> Names:
    return Names(namespace)


@pytest.fixture
async def redis_client(servers: Servers, names: Names) -> AsyncIterator[aioredis.Redis]:
    client: aioredis.Redis = aioredis.Redis.from_url(servers.redis_url)
    yield client
    with contextlib.suppress(Exception):
        await delete_redis_keys(client, names)
    await client.aclose()


async def delete_namespace_queues(amqp_url: str, names: Names, extra: list[str]) -> None:
    """Remove the queues and exchanges a test's namespace declared."""
    await delete_queues(amqp_url, names, extra)


@pytest.fixture
async def amqp_cleanup(servers: Servers, names: Names) -> AsyncIterator[list[str]]:
    """Yield a list to append extra queue names to; all are deleted after the test."""
    extra: list[str] = []
    yield extra
    await delete_namespace_queues(servers.amqp_url, names, extra)


def pytest_collection_modifyitems(config: Any, items: list[pytest.Item]) -> None:
    for item in items:
        if "servers" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.integration)


@pytest.fixture
async def backends(
    servers: Servers, names: Names, redis_client: aioredis.Redis, amqp_cleanup: list[str]
) -> AsyncIterator[Any]:
    """Real Redis + RabbitMQ in this test's namespace."""
    from ledgerflow.eventlog.settings import Settings
    from ledgerflow.worker.backend import connect

    settings = Settings(servers.amqp_url, servers.redis_url, names.namespace)
    async with connect(settings) as connected:
        yield connected


@pytest.fixture
async def running(backends: Any) -> AsyncIterator[Any]:
    """A worker and a scheduler in this process on the real servers, plus a client."""
    from ledgerflow.scheduler.embedded import serving

    async with serving(backends.store, backends.broker) as client:
        yield client


@pytest.fixture
async def scheduling(backends: Any) -> AsyncIterator[Any]:
    """A scheduler (with its timer loop) and a client in this process; tests bring workers."""
    from ledgerflow.scheduler.client import Client
    from ledgerflow.scheduler.service import Scheduler

    scheduler = Scheduler(backends.store, backends.broker)
    await scheduler.start()
    try:
        yield Client(backends.store, backends.broker)
    finally:
        await scheduler.stop()
