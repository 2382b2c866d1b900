"""Steps under lf.Concurrency, measuring how many run at once per key (in this process)."""

from __future__ import annotations

import asyncio
from collections import Counter

import ledgerflow as lf

RUNNING: Counter[str] = Counter()
PEAK: Counter[str] = Counter()
FINISHED: list[str] = []


@lf.step(concurrency=lf.Concurrency(2, key="tenant"))
async def call_api(tenant: str, i: int, seconds: float = 0.1) -> str:
    RUNNING[tenant] += 1
    PEAK[tenant] = max(PEAK[tenant], RUNNING[tenant])
    try:
        await asyncio.sleep(seconds)
    finally:
        RUNNING[tenant] -= 1
    FINISHED.append(tenant)
    return f"{tenant}-{i}"


@lf.workflow
async def one_call(tenant: str, i: int, seconds: float = 0.1) -> str:
    return await call_api(tenant, i, seconds)


@lf.workflow(concurrency=lf.Concurrency(1, key="tenant"))
async def tenant_job(tenant: str, seconds: float) -> str:
    await lf.sleep(seconds)
    return tenant
