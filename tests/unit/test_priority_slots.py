"""Priority lanes and the worker's slots that favour them."""

from __future__ import annotations

import asyncio

import pytest
from ledgerflow.eventlog.names import check_priority, lane, lane_base, lane_priority
from ledgerflow.worker.priority import PrioritySlots

import ledgerflow as lf


def test_lanes_name_and_read_back_their_priority() -> None:
    assert [lane("default", p) for p in range(4)] == [
        "default",
        "default.p1",
        "default.p2",
        "default.p3",
    ]
    assert lane("mail", 9) == "mail.p3" and lane("mail", -1) == "mail"
    assert [lane_priority(lane("mail", p)) for p in range(4)] == [0, 1, 2, 3]
    assert lane_base("mail.p2") == "mail" and lane_base("mail.pdf") == "mail.pdf"
    for bad in (-1, 4, True, 1.0, "1", None):
        with pytest.raises(lf.InvalidArgumentError, match="invalid priority"):
            check_priority(bad)


async def test_a_free_slot_goes_to_the_highest_then_oldest_waiter() -> None:
    slots = PrioritySlots(1)
    await slots.acquire(0)
    order: list[str] = []

    async def take(name: str, priority: int) -> None:
        await slots.acquire(priority)
        order.append(name)
        slots.release()

    waiters = [
        asyncio.create_task(take(name, p))
        for name, p in (("low-1", 0), ("high-1", 3), ("mid", 1), ("high-2", 3), ("low-2", 0))
    ]
    await asyncio.sleep(0)
    assert slots.waiting == 5
    slots.release()
    await asyncio.gather(*waiters)
    assert order == ["high-1", "high-2", "mid", "low-1", "low-2"]


async def test_a_cancelled_waiter_neither_takes_nor_loses_a_slot() -> None:
    slots = PrioritySlots(1)
    await slots.acquire()
    gone = asyncio.create_task(slots.acquire(3))
    await asyncio.sleep(0)
    gone.cancel()
    await asyncio.gather(gone, return_exceptions=True)
    slots.release()
    await asyncio.wait_for(slots.acquire(0), 1)  # the slot was not lost to the cancelled one


def test_a_step_or_run_priority_out_of_range_is_refused() -> None:
    with pytest.raises(lf.ConfigurationError, match="invalid priority"):

        @lf.step(priority=7)
        async def too_urgent() -> None: ...


async def test_a_run_records_its_priority_and_its_steps_go_to_its_lane() -> None:
    from ledgerflow.eventlog.events import EventType

    from tests.apps import limits

    async with lf.embedded() as client:
        with pytest.raises(lf.InvalidArgumentError, match="invalid priority"):
            await client.start(limits.one_call, "x", 0, run_id="never", priority=9)
        assert not await client.exists("never")
        run = await client.start(limits.one_call, "x", 0, 0.0, priority=2)
        assert await run.result(timeout=20) == "x-0"
        events = await client.events(run.run_id)
    assert events[0].data["priority"] == 2
    created = next(e for e in events if e.type is EventType.STEP_CREATED)
    assert created.data["queue"] == "default.p2"
