"""Workflows and steps for the hostile-input tests (issue 11, items 2, 6, 7, 11)."""

from __future__ import annotations

import asyncio
import datetime as dt
import math
from typing import Any

from ledgerflow.scheduler.context import current_instance

import ledgerflow as lf
from tests.apps.flaky import FAST, count_attempt

DELAYS: dict[str, Any] = {
    "huge": 1e300,
    "inf": math.inf,
    "nan": math.nan,
    "timedelta_max": dt.timedelta.max,
    "text": "5",
}


@lf.step(name="ig_charge")
async def charge(label: str, amount: int) -> int:
    await count_attempt(label)
    return amount


@lf.step(name="ig_refund")
async def refund(label: str, amount: int) -> int:
    await count_attempt(f"{label}:refund")
    return -amount


@lf.workflow(name="ig_charge_one")
async def charge_one(label: str, amount: int) -> int:
    return await charge(label, amount)


@lf.workflow(name="ig_charge_two")
async def charge_two(label: str) -> int:
    first, second = await asyncio.gather(charge(label, 1), charge(label, 2))
    return first + second


@lf.step(name="ig_retry_after", retry=FAST)
async def retry_after(label: str, kind: str) -> str:
    await count_attempt(label)
    raise lf.RetryableError("slow down", retry_after=DELAYS[kind])


@lf.workflow(name="ig_retry_after_wf")
async def retry_after_wf(label: str, kind: str) -> str:
    try:
        await retry_after(label, kind)
    except lf.StepFailedError as exc:
        return f"{exc.attempts}: {exc.type_name}: {exc.message}"
    return "not reached"


@lf.workflow(name="ig_sleep_caught")
async def sleep_caught(kind: str) -> str:
    try:
        await lf.sleep(DELAYS[kind])
    except lf.InvalidArgumentError as exc:
        return f"refused: {exc}"
    return "slept"


@lf.workflow(name="ig_sleep_uncaught")
async def sleep_uncaught(kind: str) -> None:
    await lf.sleep(DELAYS[kind])


@lf.workflow(name="ig_wait_for_caught")
async def wait_for_caught(label: str, kind: str) -> str:
    try:
        await lf.wait_for(charge(label, 1), timeout=DELAYS[kind])
    except lf.InvalidArgumentError as exc:
        return f"refused: {exc}"
    return "waited"


@lf.workflow(name="ig_slipped_through")
async def slipped_through() -> None:
    """A due time past what the log accepts, slipping past lf.sleep's own check."""
    instance = current_instance.get()
    assert instance is not None
    await instance.sleep(1e12)  # due about 1e15 ms: past year 9999


@lf.workflow(name="ig_hook_or_conflict")
async def hook_or_conflict(token: str) -> str:
    try:
        return f"got {await lf.create_hook(token=token)}"
    except lf.HookConflictError as exc:
        return f"conflict with {exc.owner_run}"
