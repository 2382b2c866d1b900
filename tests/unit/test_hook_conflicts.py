"""A hook whose token is taken: recorded as conflicted, seen as lf.HookConflictError (item 7).

The same from scratch as from the sticky cache, and a run that asks for such a
hook keeps running.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from ledgerflow.eventlog.events import EventType
from ledgerflow.scheduler.replay import Completed, HookCommand

import ledgerflow as lf

from .helpers import LogBuilder, instance_for, stack


@lf.workflow(name="unit_hooks_twins")
async def twins(token: str) -> list[Any]:
    first = lf.create_hook(token=token)
    second = lf.create_hook(token=token)
    try:
        await second
        outcome = "second was live"
    except lf.HookConflictError as exc:
        outcome = f"conflict with {exc.owner_run} over {exc.token}"
    return [outcome, await first]


@lf.workflow(name="unit_hooks_uncaught")
async def uncaught(token: str) -> Any:
    return await lf.create_hook(token=token)


@lf.workflow(name="unit_hooks_bad_token")
async def bad_token(token: str) -> str:
    try:
        lf.create_hook(token=token)
    except lf.InvalidArgumentError as exc:
        return f"refused: {exc}"
    return "created"


@lf.workflow(name="unit_hooks_then_end")
async def hook_then_end() -> int:
    lf.create_hook(token="left-behind")
    return 1


def _conflicted_log(run_id: str) -> tuple[LogBuilder, list[Any]]:
    log = LogBuilder("unit_hooks_twins", ["twin"])
    events = [
        *log.start(),
        log.event(EventType.HOOK_CREATED, "s1", {"token": "twin", "metadata": None}),
        log.event(
            EventType.HOOK_CREATED,
            "s2",
            {"token": "twin", "metadata": None, "conflict": {"run": run_id}},
        ),
        log.event(EventType.HOOK_DISPOSED, "s2", {"reason": "token conflict"}),
        log.event(EventType.HOOK_RECEIVED, "s1", {"payload": "yes"}),
    ]
    return log, events


def test_from_scratch_and_incrementally_the_workflow_sees_the_same_conflict() -> None:
    run_id = "unit-twins"
    _, events = _conflicted_log(run_id)
    expected = Completed([f"conflict with {run_id} over twin", "yes"])

    scratch = instance_for(run_id, events, twins.definition.fn)
    scratch.feed(events)
    decision = scratch.decide()
    assert (decision.commands, decision.outcome) == ([], expected)
    scratch.close()

    sticky = instance_for(run_id, events, twins.definition.fn)
    sticky.feed(events[:2])
    first = sticky.decide()
    assert [type(c) for c in first.commands] == [HookCommand, HookCommand]
    assert first.outcome is None
    sticky.feed(events[2:5])  # the conflict arrives while the code awaits the hook
    middle = sticky.decide()
    assert (middle.commands, middle.outcome) == ([], None)
    assert sticky.live_hooks() == ["s1"]
    sticky.feed(events[5:])
    assert sticky.decide().outcome == expected
    sticky.close()


async def test_two_hooks_with_one_token_in_one_decision() -> None:
    """The second is conflicted; the first stays live and resumable; the run completes."""
    async with stack() as s:
        run = await s.client.start(twins, "twin-token")
        events = await _until(s, run.run_id, EventType.HOOK_DISPOSED)
        created = [e for e in events if e.type is EventType.HOOK_CREATED]
        assert [e.data.get("conflict") for e in created] == [None, {"run": run.run_id}]
        assert await s.store.hook_owner("twin-token") == (run.run_id, "s1")
        await s.client.resume_hook("twin-token", "approved")
        assert await run.result(timeout=5) == [
            f"conflict with {run.run_id} over twin-token",
            "approved",
        ]
        # A fresh replay of the finished log agrees with what the cached instance did.
        assert lf.testing.replay(await s.client.events(run.run_id), twins, run_id=run.run_id)


async def test_a_conflict_seen_after_a_cache_miss_is_the_same_conflict() -> None:
    async with stack() as s:
        run = await s.client.start(twins, "twin-evicted")
        await _until(s, run.run_id, EventType.HOOK_DISPOSED)
        s.scheduler.cache.evict(run.run_id)
        await s.client.resume_hook("twin-evicted", "late")
        assert await run.result(timeout=5) == [
            f"conflict with {run.run_id} over twin-evicted",
            "late",
        ]


async def test_an_uncaught_conflict_fails_the_run_with_hook_conflict_error() -> None:
    async with stack() as s:
        owner = await s.client.start(uncaught, "taken")
        await _until(s, owner.run_id, EventType.HOOK_CREATED)
        second = await s.client.start(uncaught, "taken")
        with pytest.raises(lf.WorkflowFailedError, match="already used by a live hook") as info:
            await second.result(timeout=5)
        assert info.value.type_name == "ledgerflow.HookConflictError"
        assert owner.run_id in info.value.message
        await s.client.resume_hook("taken", 7)
        assert await owner.result(timeout=5) == 7


async def test_a_bad_token_is_an_error_the_workflow_can_catch() -> None:
    async with stack() as s:
        run = await s.client.start(bad_token, "not ok|bar")
        result = await run.result(timeout=5)
        assert result.startswith("refused: invalid hook token 'not ok|bar'")
        events = await s.client.events(run.run_id)
        assert not [e for e in events if e.type is EventType.HOOK_CREATED]


async def test_a_hook_asked_for_in_the_decision_that_ends_the_run_is_not_disposed() -> None:
    """It was never recorded: disposing it was an illegal transition, and the run hung."""
    async with stack() as s:
        run = await s.client.start(hook_then_end)
        assert await run.result(timeout=5) == 1
        types = [e.type for e in await s.client.events(run.run_id)]
        assert EventType.HOOK_DISPOSED not in types


async def _until(s: Any, run_id: str, kind: EventType) -> list[Any]:
    for _ in range(200):
        events = await s.client.events(run_id)
        if any(e.type is kind for e in events):
            return list(events)
        await asyncio.sleep(0.01)
    raise AssertionError(f"no {kind.value} in {[e.type.value for e in events]}")
