"""Workflows that loop forever in principle and continue as new (issue 13, history limits)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import ledgerflow as lf


@lf.step(name="ch_poll")
async def poll(done: int) -> int:
    return done + 1


@lf.workflow(name="ch_poller")
async def poller(total: int, every: int, done: int = 0) -> int:
    """Polls until ``total`` polls are done, continuing as new every ``every`` polls."""
    return await _polls(total, every, done)


async def _polls(total: int, every: int, done: int) -> int:
    """Up to ``every`` polls; then the end, or the same workflow continued as new."""
    for _ in range(every):
        if done >= total:
            return done
        done = await poll(done)
    if done >= total:
        return done
    lf.continue_as_new(total, every, done=done)


@lf.workflow(name="ch_kept_poller", retention=timedelta(hours=1))
async def kept_poller(total: int, every: int, done: int = 0) -> int:
    """``poller`` with a retention of its own, which every link of its chain keeps."""
    return await _polls(total, every, done)


@lf.workflow(name="ch_inbox")
async def inbox(token: str, every: int, seen: list[Any] | None = None) -> list[Any]:
    """Collects hook payloads until "stop", continuing as new every ``every`` payloads."""
    seen = list(seen or [])
    hook = lf.create_hook(token=token)
    for _ in range(every):
        payload = await hook
        if payload == "stop":
            return seen
        seen.append(payload)
    lf.continue_as_new(token, every, seen)


@lf.workflow(name="ch_swallower")
async def swallower(n: int) -> str:
    """``except Exception`` in workflow code does not swallow a continuation."""
    try:
        if n < 2:
            lf.continue_as_new(n + 1)
    except Exception:
        return "swallowed"
    return f"ended at {n}"


@lf.workflow(name="ch_parent")
async def parent(total: int, every: int) -> str:
    """Awaits a child that continues as new: the parent gets the chain's end."""
    result = await poller(total, every)
    return f"child polled {result}"


@lf.workflow(name="ch_endless")
async def endless(token: str) -> None:
    """Loops over a hook without end and never continues: what the history limit is for."""
    hook = lf.create_hook(token=token)
    while True:
        await hook
