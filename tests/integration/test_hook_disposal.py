"""Disposing a hook from workflow code: ``hook.dispose()`` and ``async with hook``.

The disposal is recorded (hook_disposed) when the code asks for it, not at the run's
end: the token is free at once and later deliveries are refused. A replay of the log
finds the disposal recorded and asks for nothing more.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from ledgerflow.eventlog.events import EventType

import ledgerflow as lf
from tests.apps import waiting

pytestmark = pytest.mark.integration


async def until(client: lf.Client, run_id: str, wanted: EventType, count: int = 1) -> list[Any]:
    for _ in range(200):
        events = await client.events(run_id)
        if sum(e.type is wanted for e in events) >= count:
            return events
        await asyncio.sleep(0.05)
    raise AssertionError(f"{run_id} never recorded {count} {wanted.value}")


async def test_async_with_disposes_the_hook_when_the_block_ends(running: lf.Client) -> None:
    run = await running.start(waiting.dispose_then_sleep, "disp-1", 1.0)
    await until(running, run.run_id, EventType.HOOK_CREATED)
    await running.resume_hook("disp-1", {"n": 1})
    events = await until(running, run.run_id, EventType.HOOK_DISPOSED)
    assert not any(e.type is EventType.RUN_COMPLETED for e in events)  # before the end
    with pytest.raises(lf.HookNotFoundError):
        await running.resume_hook("disp-1", {"n": 2})
    # Mid-run, a replay from the log records nothing new: the disposal is already there.
    partial = lf.testing.replay(events, waiting.dispose_then_sleep, run_id=run.run_id)
    assert partial.pending == ()
    assert await run.result(timeout=20) == {"first": {"n": 1}, "after": "disposed"}
    events = await running.events(run.run_id)
    assert sum(e.type is EventType.HOOK_DISPOSED for e in events) == 1
    replayed = lf.testing.replay(events, waiting.dispose_then_sleep, run_id=run.run_id)
    assert isinstance(replayed.outcome, lf.testing.Completed)


async def test_a_disposed_token_is_free_for_another_run_at_once(running: lf.Client) -> None:
    first = await running.start(waiting.dispose_unused, "disp-2")
    await until(running, first.run_id, EventType.HOOK_DISPOSED)
    second = await running.start(waiting.approval_with_token, "disp-2")
    await until(running, second.run_id, EventType.HOOK_CREATED)
    assert await running.resume_hook("disp-2", "for the second") == second.run_id
    assert await second.result(timeout=20) == "for the second"
    assert await first.result(timeout=20) == "done"
    events = await running.events(first.run_id)
    assert [e.type for e in events if e.corr == "s1"] == [
        EventType.HOOK_CREATED,
        EventType.HOOK_DISPOSED,
    ]
