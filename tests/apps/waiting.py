"""Workflows that sleep, wait on hooks, get cancelled and start children (issue 4 tests)."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import ledgerflow as lf
from tests.apps import arith


@lf.workflow(name="wt_sleeper")
async def sleeper(seconds: float) -> float:
    before = lf.now()
    await lf.sleep(dt.timedelta(seconds=seconds))
    return (lf.now() - before).total_seconds()


@lf.step(name="wt_mark")
async def mark(label: str) -> str:
    return f"marked {label}"


@lf.workflow(name="wt_sleep_then_step")
async def sleep_then_step(seconds: float) -> str:
    await lf.sleep(seconds)
    return await mark("after sleep")


@lf.workflow(name="wt_approval")
async def approval(order_id: str) -> Any:
    hook = lf.create_hook(token=f"approve-{order_id}", metadata={"order": order_id})
    return await hook


@lf.workflow(name="wt_collector")
async def collector(token: str) -> list[Any]:
    seen = []
    async for payload in lf.create_hook(token=token):
        if payload == "stop":
            return seen
        seen.append(payload)
    return seen


@lf.workflow(name="wt_timeout")
async def approval_with_timeout(token: str, seconds: float) -> str:
    hook = lf.create_hook(token=token)
    try:
        payload = await lf.wait_for(hook, timeout=seconds)
    except lf.WaitTimeout:
        return "timed out"
    return f"approved: {payload}"


@lf.step(name="wt_until_cancelled", retry=lf.RetryPolicy(max_attempts=1))
async def until_cancelled(seconds: float) -> str:
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    while loop.time() < end:
        if lf.step_context().cancelled:
            return "saw cancel"
        await asyncio.sleep(0.05)
    return "never cancelled"


@lf.workflow(name="wt_long_step")
async def long_step(seconds: float) -> str:
    return await until_cancelled(seconds)


@lf.step(name="wt_parked", queue="parked")
async def parked(i: int) -> int:
    return i


@lf.workflow(name="wt_parked_fanout")
async def parked_fanout(n: int) -> list[int]:
    return list(await asyncio.gather(*(parked(i) for i in range(n))))


@lf.workflow(name="wt_parent")
async def parent(n: int) -> int:
    a, b = await asyncio.gather(arith.total(n), arith.total(n + 1))
    return a + b


@lf.workflow(name="wt_parent_of_failing")
async def parent_of_failing(message: str) -> str:
    try:
        await arith.failing(message)
    except lf.ChildWorkflowError as exc:
        return f"child failed: {exc.type_name}: {exc.message}"
    return "not reached"


@lf.workflow(name="wt_parent_of_sleepers")
async def parent_of_sleepers(seconds: float) -> list[float]:
    return list(await asyncio.gather(sleeper(seconds), sleeper(seconds)))


@lf.workflow(name="wt_deterministic")
async def deterministic() -> list[Any]:
    values: list[Any] = [lf.now().isoformat(), str(lf.uuid4()), lf.random()]
    await mark("between")
    values += [lf.now().isoformat(), str(lf.uuid4()), lf.random()]
    return values


@lf.workflow(name="wt_reads_clock")
async def reads_clock(which: str) -> float:
    import random
    import time
    import uuid

    calls = {
        "time": time.time,
        "monotonic": time.monotonic,
        "sleep": lambda: time.sleep(0.01),
        "random": random.random,
        "uuid4": uuid.uuid4,
    }
    calls[which]()
    return 0.0


@lf.workflow(name="wt_webhook")
async def webhook_receiver(times: int = 1) -> list[Any]:
    """Waits for ``times`` calls to its webhook, then returns what they delivered."""
    hook = lf.create_webhook(metadata={"purpose": "test"})
    return [await hook for _ in range(times)]


@lf.workflow(name="wt_token")
async def approval_with_token(token: str) -> Any:
    return await lf.create_hook(token=token)


@lf.workflow(name="wt_dispose")
async def dispose_then_sleep(token: str, seconds: float) -> dict[str, Any]:
    """Takes one payload inside ``async with``, then sleeps with the hook disposed."""
    async with lf.create_hook(token=token) as hook:
        first = await hook
    await lf.sleep(seconds)
    try:
        await hook
    except lf.HookDisposedError:
        return {"first": first, "after": "disposed"}
    return {"first": first, "after": "not disposed"}


@lf.workflow(name="wt_dispose_early")
async def dispose_unused(token: str) -> str:
    """Creates a hook and disposes it at once: the token is free again before the run ends."""
    hook = lf.create_hook(token=token)
    hook.dispose()
    hook.dispose()  # twice is once
    await lf.sleep(0.5)
    return "done"
