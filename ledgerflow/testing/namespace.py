"""Clean up a namespace: delete its Redis keys and its RabbitMQ queues and exchanges.

Give each integration test (or benchmark, or chaos run) a namespace of its own
and delete it afterwards, and parallel runs on shared servers never see each
other. Only names of the namespace are touched (``Names.key_pattern``, its
queues and exchanges), never anyone else's.

A queue or exchange that cannot be deleted (already gone, refused) is skipped
and not counted, on a fresh channel each, since a refused operation closes the
channel it ran on. Whether an unreachable server is an error is the caller's
choice: ``best_effort`` records it in the result and goes on with the other
server, for clean-ups that must not mask the error that got them there.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aio_pika

from ledgerflow.broker.rabbitmq import connect_first
from ledgerflow.eventlog.names import DEFAULT_STEP_QUEUE, MAX_PRIORITY, Names, lane
from ledgerflow.eventlog.redis_client import RedisClient, redis_client
from ledgerflow.worker.registry import steps

BATCH = 500
"""Keys per UNLINK: a namespace may hold many thousands, one command should not."""


@dataclass(frozen=True)
class Deleted:
    """What a clean-up removed, and what it could not reach (``best_effort`` only)."""

    redis_keys: int = 0
    queues: int = 0
    exchanges: int = 0
    redis_keys_left: int | None = None
    errors: tuple[str, ...] = field(default=())


async def delete_redis_keys(client: RedisClient, names: Names) -> int:
    """UNLINK every key of the namespace, ``BATCH`` at a time; how many were deleted.

    On a cluster the scan visits every master, and each UNLINK is split by slot.
    """
    deleted = 0
    batch: list[Any] = []
    async for key in client.scan_iter(match=names.key_pattern(), count=1000):
        batch.append(key)
        if len(batch) >= BATCH:
            deleted += int(await client.unlink(*batch))
            batch = []
    if batch:
        deleted += int(await client.unlink(*batch))
    return deleted


async def count_redis_keys(client: RedisClient, names: Names) -> int:
    """Keys of the namespace still in Redis (0 after a complete clean-up)."""
    return len([k async for k in client.scan_iter(match=names.key_pattern(), count=1000)])


def namespace_queues(names: Names, extra: Sequence[str] = ()) -> list[str]:
    """The namespace's queues: the fixed ones, every step queue registered here, ``extra``.

    Workers declare a queue for every step queue registered in their process (an
    app may register several), not only the default one.
    """
    # Every priority lane of each step queue (workers consume them all: names.lane).
    shorts = dict.fromkeys([DEFAULT_STEP_QUEUE, *steps.queues()])
    lanes = [names.step_queue(lane(q, p)) for q in shorts for p in range(MAX_PRIORITY + 1)]
    queues = [*lanes, names.runs_queue, names.dead_queue, *extra]
    return list(dict.fromkeys(queues))


async def delete_queues(amqp_url: str, names: Names, extra: Sequence[str] = ()) -> tuple[int, int]:
    """Delete the namespace's queues and exchanges; (queues, exchanges) deleted.

    An unreachable RabbitMQ raises ServiceUnavailableError (``amqp_url`` may list a
    cluster's nodes: the first that answers is used); a single refused deletion is
    skipped.
    """
    queues = exchanges = 0
    connection = await connect_first(amqp_url)
    try:
        for queue in namespace_queues(names, extra):
            queues += await _delete_one(connection, queue, exchange=False)
        for exchange in (names.exchange, names.dead_exchange):
            exchanges += await _delete_one(connection, exchange, exchange=True)
    finally:
        await connection.close()
    return queues, exchanges


async def _delete_one(
    connection: aio_pika.abc.AbstractConnection, name: str, *, exchange: bool
) -> bool:
    """Delete one queue or exchange on a channel of its own; False if RabbitMQ refused.

    A channel that cannot be opened is a broken connection, and raises.
    """
    channel = await connection.channel()
    try:
        if exchange:
            await channel.exchange_delete(name)
        else:
            await channel.queue_delete(name)
    except Exception:
        return False
    finally:
        with contextlib.suppress(Exception):
            await channel.close()
    return True


async def _on_redis(
    redis_url: str, act: Callable[[RedisClient, Names], Awaitable[int]], names: Names
) -> int:
    """``act`` on a client of its own (one server's or a cluster's), closed whatever happens."""
    client = redis_client(redis_url, max_connections=4)
    try:
        return await act(client, names)
    finally:
        await client.aclose()


async def delete_namespace(
    amqp_url: str,
    redis_url: str,
    namespace: str,
    extra_queues: Sequence[str] = (),
    *,
    best_effort: bool = False,
) -> Deleted:
    """Delete every Redis key, queue and exchange of ``namespace``; count what is left.

    With ``best_effort`` an unreachable server is recorded in ``Deleted.errors``
    and the other one is still cleaned; without it, the error propagates.
    """
    names = Names(namespace)
    errors: list[str] = []
    keys = queues = exchanges = 0
    left: int | None = None
    try:
        keys = await _on_redis(redis_url, delete_redis_keys, names)
    except Exception as exc:
        if not best_effort:
            raise
        errors.append(f"redis: {type(exc).__name__}: {exc}")
    try:
        queues, exchanges = await delete_queues(amqp_url, names, extra_queues)
    except Exception as exc:
        if not best_effort:
            raise
        errors.append(f"rabbitmq: {type(exc).__name__}: {exc}")
    try:
        left = await _on_redis(redis_url, count_redis_keys, names)
    except Exception as exc:
        if not best_effort:
            raise
        errors.append(f"redis: {type(exc).__name__}: {exc}")
    return Deleted(keys, queues, exchanges, left, tuple(errors))
