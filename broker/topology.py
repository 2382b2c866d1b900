"""RabbitMQ exchanges and queues of one namespace, declared idempotently.

All queues are quorum queues: replicated, durable, and they count deliveries
(``x-delivery-count``) so RabbitMQ itself dead-letters a message that keeps
coming back (a poison message crashing workers) instead of looping forever.
Every queue is bound to the namespace's direct exchange under its own full
name, so publishing with ``mandatory`` to an undeclared queue is returned to
the publisher rather than silently dropped.

Declaring with arguments that differ from an existing queue's is refused by
RabbitMQ (PRECONDITION_FAILED); that is turned into a ConfigurationError that
says what to do, because it is always a deployment mismatch, never transient.

**Replication.** A quorum queue has one replica (a Raft member) per node it was
created on, and keeps working while a majority of them is up. How many is
RabbitMQ's own choice unless ``LEDGERFLOW_QUORUM_SIZE`` says otherwise: with no
``x-quorum-initial-group-size`` argument RabbitMQ places ``quorum_cluster_size``
replicas (a server setting, 3 unless changed), or one per cluster node if the
cluster is smaller. That is min(3, nodes) without the client having to know the
cluster, which AMQP cannot tell it. ``LEDGERFLOW_QUORUM_SIZE=N`` sends the argument
(RabbitMQ still caps it at the cluster's size). The argument only matters when a
queue is created, yet RabbitMQ 3.10 compares it on every later declaration: so it
is a fixed setting of the deployment, never derived from how many nodes happen to
be up (a node down would change it and every restart would be refused).
"""

from __future__ import annotations

import os
from typing import Any, Final

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel
from ledgerflow.eventlog import codec
from ledgerflow.eventlog.errors import ConfigurationError
from ledgerflow.eventlog.names import Names

QUORUM: dict[str, Any] = {"x-queue-type": "quorum"}

MAX_MESSAGE_BYTES: Final = codec.MAX_PAYLOAD + 64 * 1024
"""The largest message body ledgerflow publishes or decodes.

One step's arguments may be ``codec.MAX_PAYLOAD`` (the ceiling of a step's
``max_payload``) plus the ids and names around them; ``publish_steps`` splits
batches so that no message exceeds this. Consumers refuse (dead-letter) a longer
body before unpacking it. RabbitMQ's own ``max_message_size`` is a server-wide
setting (rabbitmq.conf), not a queue argument: set it to at least this.
"""


QUORUM_SIZE_ENV: Final = "LEDGERFLOW_QUORUM_SIZE"
MAX_QUORUM_SIZE: Final = 99
"""Well past any sensible replica count (RabbitMQ advises at most 7); a bound on typos."""


def quorum_size_from_env() -> int | None:
    """``LEDGERFLOW_QUORUM_SIZE``: replicas per quorum queue; unset or empty: RabbitMQ decides."""
    raw = os.environ.get(QUORUM_SIZE_ENV, "").strip()
    if not raw:
        return None
    try:
        size = int(raw)
    except ValueError:
        raise ConfigurationError(
            f"{QUORUM_SIZE_ENV} must be a whole number of replicas, got {raw[:40]!r}"
        ) from None
    return check_quorum_size(size)


def check_quorum_size(size: int | None) -> int | None:
    if size is not None and not 1 <= size <= MAX_QUORUM_SIZE:
        raise ConfigurationError(
            f"the quorum queue size (replicas per queue) must be from 1 to {MAX_QUORUM_SIZE}, "
            f"got {size}"
        )
    return size


def quorum_arguments(quorum_size: int | None) -> dict[str, Any]:
    """``x-queue-type: quorum``, and the replica count when the deployment sets one."""
    if check_quorum_size(quorum_size) is None:
        return dict(QUORUM)
    return {**QUORUM, "x-quorum-initial-group-size": quorum_size}


def work_queue_arguments(
    names: Names, delivery_limit: int, quorum_size: int | None = None
) -> dict[str, Any]:
    """Arguments of every queue that is consumed (step queues and the runs queue)."""
    if delivery_limit < 1:
        raise ConfigurationError(f"delivery_limit must be at least 1, got {delivery_limit}")
    return {
        **quorum_arguments(quorum_size),
        "x-dead-letter-exchange": names.dead_exchange,
        "x-dead-letter-routing-key": names.dead_queue,
        "x-delivery-limit": delivery_limit,
    }


async def declare_exchanges(channel: AbstractChannel, names: Names) -> None:
    """Declare the main and the dead-letter exchange."""
    try:
        await channel.declare_exchange(names.exchange, aio_pika.ExchangeType.DIRECT, durable=True)
        await channel.declare_exchange(
            names.dead_exchange, aio_pika.ExchangeType.DIRECT, durable=True
        )
    except aiormq.exceptions.ChannelPreconditionFailed as exc:
        raise _mismatch("exchange", names.exchange, exc) from exc


async def declare_work_queue(
    channel: AbstractChannel,
    names: Names,
    queue: str,
    delivery_limit: int,
    quorum_size: int | None = None,
) -> None:
    """Declare a consumed queue with dead-lettering and its binding to the exchange."""
    try:
        declared = await channel.declare_queue(
            queue,
            durable=True,
            arguments=work_queue_arguments(names, delivery_limit, quorum_size),
        )
    except aiormq.exceptions.ChannelPreconditionFailed as exc:
        raise _mismatch("queue", queue, exc) from exc
    await declared.bind(names.exchange, routing_key=queue)


async def declare_dead_queue(
    channel: AbstractChannel, names: Names, quorum_size: int | None = None
) -> None:
    """The dead queue takes RabbitMQ's own dead-letters and our explicit ones.

    It has no dead-letter exchange and no delivery limit: it is the end of the
    line, and a tool reading it must never lose a message by nacking it.
    """
    try:
        declared = await channel.declare_queue(
            names.dead_queue, durable=True, arguments=quorum_arguments(quorum_size)
        )
    except aiormq.exceptions.ChannelPreconditionFailed as exc:
        raise _mismatch("queue", names.dead_queue, exc) from exc
    await declared.bind(names.dead_exchange, routing_key=names.dead_queue)
    await declared.bind(names.exchange, routing_key=names.dead_queue)


async def declare_topology(
    channel: AbstractChannel, names: Names, delivery_limit: int, quorum_size: int | None = None
) -> None:
    """Exchanges, the runs queue, the dead queue and the default step queue."""
    await declare_exchanges(channel, names)
    await declare_dead_queue(channel, names, quorum_size)
    await declare_work_queue(channel, names, names.runs_queue, delivery_limit, quorum_size)
    await declare_work_queue(channel, names, names.step_queue(), delivery_limit, quorum_size)


def _mismatch(kind: str, name: str, exc: Exception) -> ConfigurationError:
    return ConfigurationError(
        f"RabbitMQ {kind} {name!r} already exists with different settings ({exc}); "
        f"use the same settings (e.g. delivery_limit, {QUORUM_SIZE_ENV}) everywhere, "
        "or delete it first"
    )
