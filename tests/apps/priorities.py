"""A step that records, in Redis, the order in which its calls finish (for fleets)."""

from __future__ import annotations

import asyncio
import os

import redis.asyncio as aioredis

import ledgerflow as lf


def order_key(namespace: str) -> str:
    return f"{namespace}:test:finish-order"


@lf.step(name="pr_work")
async def work(tag: str, seconds: float) -> str:
    await asyncio.sleep(seconds)
    client = aioredis.Redis.from_url(os.environ["LEDGERFLOW_REDIS_URL"])
    try:
        await client.rpush(order_key(os.environ["LEDGERFLOW_NAMESPACE"]), tag)
    finally:
        await client.aclose()
    return tag


@lf.workflow(name="pr_one")
async def one(tag: str, seconds: float = 0.05) -> str:
    return await work(tag, seconds)


@lf.step(name="pr_urgent", priority=3)
async def urgent(tag: str) -> str:
    return await work.definition.fn(tag, 0.05)


@lf.workflow(name="pr_urgent_one")
async def urgent_one(tag: str) -> str:
    return await urgent(tag)
