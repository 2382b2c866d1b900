"""The floor: what bare aio-pika and bare redis-py achieve on this machine, now.

The machine is shared and noisy, so an absolute figure means little on its own;
every ledgerflow figure is reported next to the floor, as a ratio.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import aio_pika
from aio_pika.abc import AbstractIncomingMessage
from ledgerflow.broker.rabbitmq import connect_first
from ledgerflow.eventlog.redis_client import redis_client
from ledgerflow.eventlog.settings import Settings

from bench.config import FLOOR_ATTEMPTS, FLOOR_TIMEOUT, WORKER_CONCURRENCY, Sizes
from bench.stats import pct


@dataclass
class Floor:
    """What bare clients achieve on this machine, now: the denominators of every ratio."""

    amqp_rtt_p50_ms: float | None = None
    amqp_rtt_p99_ms: float | None = None
    amqp_sequential_msgs_per_s: float | None = None
    amqp_pipelined_msgs_per_s: float | None = None
    amqp_pipelined_p50_ms: float | None = None
    redis_xadd_p50_ms: float | None = None
    redis_xadd_p99_ms: float | None = None
    redis_xadd_ops_per_s: float | None = None
    messages: int = 0
    xadds: int = 0
    attempts: int = 1


async def amqp_floor(amqp_url: str, queue_name: str, n: int, floor: Floor) -> None:
    """Bare aio-pika, set up as ledgerflow sets itself up.

    A quorum queue, persistent messages, ``mandatory``, publisher confirms on one
    channel and a manual-ack consumer on another. Measured twice: one message at a
    time (the round-trip latency floor for a chain of steps) and all ``n`` in
    flight at once (the throughput floor for a fan-out).
    """
    connection = await connect_first(amqp_url, timeout=FLOOR_TIMEOUT)
    try:
        publish_channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        consume_channel = await connection.channel(publisher_confirms=False)
        await consume_channel.set_qos(prefetch_count=WORKER_CONCURRENCY)
        queue = await consume_channel.declare_queue(
            queue_name, durable=True, arguments={"x-queue-type": "quorum"}
        )
        await queue.purge()
        loop = asyncio.get_running_loop()
        sent: dict[str, float] = {}
        arrived: dict[str, float] = {}
        waiting: dict[str, asyncio.Future[None]] = {}
        all_in = asyncio.Event()
        expected = 0

        async def on_message(message: AbstractIncomingMessage) -> None:
            key = message.message_id or ""
            arrived[key] = time.perf_counter()
            await message.ack()
            future = waiting.pop(key, None)
            if future is not None and not future.done():
                future.set_result(None)
            if len(arrived) >= expected:
                all_in.set()

        tag = await queue.consume(on_message, no_ack=False)

        async def publish(key: str) -> None:
            sent[key] = time.perf_counter()
            await publish_channel.default_exchange.publish(
                aio_pika.Message(
                    key.encode(), message_id=key, delivery_mode=aio_pika.DeliveryMode.PERSISTENT
                ),
                routing_key=queue_name,
                mandatory=True,
            )

        # One at a time: publish (confirmed), wait for the consumer to have it and ack.
        expected = n
        began = time.perf_counter()
        for i in range(n):
            key = f"seq-{i}"
            # Held here too: the consumer may pop it before the confirm comes back.
            got = waiting[key] = loop.create_future()
            await publish(key)
            # A plain connection does not survive a broker restart: never wait forever.
            await asyncio.wait_for(got, FLOOR_TIMEOUT)
        elapsed = time.perf_counter() - began
        rtts = [(arrived[k] - sent[k]) * 1000.0 for k in sent]
        floor.amqp_rtt_p50_ms = pct(rtts, 50)
        floor.amqp_rtt_p99_ms = pct(rtts, 99)
        floor.amqp_sequential_msgs_per_s = n / elapsed

        # All in flight: every confirm awaited together, as ledgerflow's publish_many does.
        sent.clear()
        arrived.clear()
        all_in.clear()
        began = time.perf_counter()
        await asyncio.gather(*(publish(f"pipe-{i}") for i in range(n)))
        await asyncio.wait_for(all_in.wait(), 3 * FLOOR_TIMEOUT)
        elapsed = time.perf_counter() - began
        floor.amqp_pipelined_msgs_per_s = n / elapsed
        floor.amqp_pipelined_p50_ms = pct([(arrived[k] - sent[k]) * 1000.0 for k in sent], 50)
        floor.messages = n
        await queue.cancel(tag)
    finally:
        await connection.close()


async def redis_floor(redis_url: str, key: str, n: int, floor: Floor) -> None:
    """Bare redis-py (hiredis) XADD, one at a time: the floor under every log append."""
    client = redis_client(redis_url)
    try:
        await client.ping()
        times: list[float] = []
        began = time.perf_counter()
        for i in range(n):
            t0 = time.perf_counter()
            await client.xadd(key, {"type": "step_completed", "corr": f"s{i}", "data": b"\x90"})
            times.append((time.perf_counter() - t0) * 1000.0)
        elapsed = time.perf_counter() - began
        await client.delete(key)
    finally:
        await client.aclose()
    floor.redis_xadd_p50_ms = pct(times, 50)
    floor.redis_xadd_p99_ms = pct(times, 99)
    floor.redis_xadd_ops_per_s = n / elapsed
    floor.xadds = n


async def measure_floor(settings: Settings, sizes: Sizes, floor_queue: str) -> Floor:
    """The floor, measured again from scratch if a broker restart (another tenant's outage
    test, on this shared machine) breaks it: a floor measured across a restart is no floor."""
    for attempt in range(1, FLOOR_ATTEMPTS + 1):
        floor = Floor()
        try:
            await amqp_floor(settings.amqp_url, floor_queue, sizes.floor_amqp, floor)
            await redis_floor(
                settings.redis_url, f"{settings.namespace}:bench-floor", sizes.floor_redis, floor
            )
        except Exception as exc:
            if attempt == FLOOR_ATTEMPTS:
                raise
            print(f"  floor attempt {attempt} failed ({type(exc).__name__}: {exc}); again in 5 s")
            await asyncio.sleep(5.0)
        else:
            floor.attempts = attempt
            return floor
    raise AssertionError("unreachable")
