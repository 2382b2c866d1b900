"""A step under lf.Concurrency that counts, in Redis, how many of it run at once per key.

For fleets of worker processes: the count is shared by every process (the keys sit
in the test's namespace, which the test deletes).
"""

from __future__ import annotations

import asyncio
import os

import redis.asyncio as aioredis

import ledgerflow as lf

ENTER = """
local n = redis.call('INCR', KEYS[1])
if n > tonumber(redis.call('GET', KEYS[2]) or '0') then redis.call('SET', KEYS[2], n) end
return n
"""


def keys(namespace: str, tenant: str) -> tuple[str, str, str]:
    base = f"{namespace}:test:{{{tenant}}}"
    return f"{base}:running", f"{base}:peak", f"{namespace}:test:finished"


@lf.step(concurrency=lf.Concurrency(2, key="tenant"))
async def shared_call(tenant: str, i: int, seconds: float) -> str:
    client = aioredis.Redis.from_url(os.environ["LEDGERFLOW_REDIS_URL"])
    running, peak, finished = keys(os.environ["LEDGERFLOW_NAMESPACE"], tenant)
    try:
        await client.eval(ENTER, 2, running, peak)
        try:
            await asyncio.sleep(seconds)
        finally:
            await client.decr(running)
        await client.rpush(finished, tenant)
    finally:
        await client.aclose()
    return f"{tenant}-{i}"


@lf.workflow
async def shared_one(tenant: str, i: int, seconds: float = 0.1) -> str:
    return await shared_call(tenant, i, seconds)


PAYMENTS = lf.RateLimit.named("payments-api", 10, per=1.0)


async def _record_start() -> None:
    """When a call started (ms, Redis's clock), in the test's namespace."""
    client = aioredis.Redis.from_url(os.environ["LEDGERFLOW_REDIS_URL"])
    try:
        seconds, micros = await client.time()
        started = int(seconds) * 1000 + int(micros) // 1000
        await client.rpush(f"{os.environ['LEDGERFLOW_NAMESPACE']}:test:calls", started)
    finally:
        await client.aclose()


@lf.step(rate_limit=PAYMENTS, name="ls_charge")
async def charge(i: int) -> int:
    await _record_start()
    return i


@lf.step(rate_limit=PAYMENTS, name="ls_refund")
async def refund(i: int) -> int:
    """A second step on the same budget: together they keep to 10 a second."""
    await _record_start()
    return -i


@lf.workflow(name="ls_pay")
async def pay(i: int) -> int:
    return await (charge(i) if i % 2 == 0 else refund(i))
