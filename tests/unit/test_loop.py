"""DeterministicLoop: FIFO scheduling, and NonDeterminismError for anything unrepeatable."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from ledgerflow.eventlog.errors import NonDeterminismError
from ledgerflow.eventlog.events import EventType
from ledgerflow.scheduler.loop import DeterministicLoop
from ledgerflow.scheduler.replay import Completed, Failed

import ledgerflow as lf

from .helpers import LogBuilder, counts, instance_for, unique_namespace

# --- the loop on its own --------------------------------------------------------------


def new_loop(now: float = 123.5) -> DeterministicLoop:
    return DeterministicLoop(clock=lambda: now)  # type: ignore[abstract]


def test_callbacks_run_fifo_only_when_asked() -> None:
    loop = new_loop()
    seen: list[int] = []
    for i in range(5):
        loop.call_soon(seen.append, i)
    assert seen == []  # nothing runs until the scheduler drives the loop
    loop.run_ready()
    assert seen == [0, 1, 2, 3, 4]
    loop.close()


def test_callbacks_scheduled_while_running_run_after_earlier_ones() -> None:
    loop = new_loop()
    seen: list[str] = []

    def first() -> None:
        seen.append("first")
        loop.call_soon(seen.append, "scheduled-by-first")

    loop.call_soon(first)
    loop.call_soon(seen.append, "second")
    loop.run_ready()
    assert seen == ["first", "second", "scheduled-by-first"]


def test_cancelled_handle_is_skipped() -> None:
    loop = new_loop()
    seen: list[int] = []
    loop.call_soon(seen.append, 1)
    loop.call_soon(seen.append, 2).cancel()
    loop.call_soon(seen.append, 3)
    loop.run_ready()
    assert seen == [1, 3]


def test_tasks_interleave_fifo_at_each_yield() -> None:
    loop = new_loop()
    seen: list[str] = []

    async def worker(name: str) -> str:
        for i in range(3):
            seen.append(f"{name}{i}")
            await asyncio.sleep(0)
        return name

    tasks = [loop.create_task(worker(n)) for n in "abc"]
    loop.run_ready()
    assert seen == ["a0", "b0", "c0", "a1", "b1", "c1", "a2", "b2", "c2"]
    assert [t.result() for t in tasks] == ["a", "b", "c"]


def test_gather_and_time_inside_the_loop() -> None:
    loop = new_loop(now=42.25)
    started: list[int] = []

    async def child(i: int) -> int:
        started.append(i)
        await asyncio.sleep(0)
        return i * i

    async def main() -> tuple[list[int], float, bool]:
        running = asyncio.get_running_loop()
        results = await asyncio.gather(*(child(i) for i in range(5)))
        return list(results), running.time(), running is loop

    task = loop.create_task(main())
    loop.run_ready()
    assert task.done()
    assert task.result() == ([0, 1, 4, 9, 16], 42.25, True)
    assert started == [0, 1, 2, 3, 4]


def test_blocked_task_stays_pending_until_its_future_is_set() -> None:
    loop = new_loop()
    future = loop.create_future()

    async def main() -> str:
        return f"got {await future}"

    task = loop.create_task(main())
    loop.run_ready()
    assert not task.done()
    future.set_result(7)
    loop.run_ready()
    assert task.result() == "got 7"


def test_running_loop_is_restored_after_run_ready() -> None:
    loop = new_loop()
    inner: list[object] = []
    loop.call_soon(lambda: inner.append(asyncio.get_running_loop()))
    assert asyncio.events._get_running_loop() is None
    loop.run_ready()
    assert inner == [loop]
    assert asyncio.events._get_running_loop() is None
    assert not loop.is_running()


@pytest.mark.parametrize(
    ("call", "needle"),
    [
        (lambda lp: lp.call_later(1, print), "call_later"),
        (lambda lp: lp.call_at(5.0, print), "timer"),
        (lambda lp: lp.call_soon_threadsafe(print), "call_soon_threadsafe"),
        (lambda lp: lp.run_in_executor(None, print), "run_in_executor"),
        (lambda lp: lp.run_forever(), "run_forever"),
        (lambda lp: lp.add_reader(0, print), "reader"),
    ],
)
def test_forbidden_loop_methods_raise_naming_the_call(call: Any, needle: str) -> None:
    loop = new_loop()
    with pytest.raises(NonDeterminismError, match="not allowed inside workflow code") as info:
        call(loop)
    assert needle in str(info.value)


# --- through a WorkflowInstance: what workflow code actually sees ---------------------


async def wf_sleep_one() -> None:
    await asyncio.sleep(1)


async def wf_wait_for() -> Any:
    future = asyncio.get_running_loop().create_future()
    return await asyncio.wait_for(future, 1)


async def wf_run_in_executor() -> Any:
    return await asyncio.get_running_loop().run_in_executor(None, time.time)


async def wf_to_thread() -> Any:
    return await asyncio.to_thread(time.time)


async def wf_open_connection() -> Any:
    return await asyncio.open_connection("127.0.0.1", 9)


async def wf_timeout_block() -> Any:
    async with asyncio.timeout(1):
        await asyncio.sleep(0)
        return 1


FORBIDDEN = [
    (wf_sleep_one, "asyncio.sleep()"),
    (wf_wait_for, "wait_for"),
    (wf_run_in_executor, "run_in_executor"),
    (wf_to_thread, "asyncio.to_thread"),
    (wf_open_connection, "asyncio.open_connection"),
    (wf_timeout_block, "asyncio.timeout"),
]


@pytest.mark.parametrize(("fn", "needle"), FORBIDDEN, ids=[f.__name__ for f, _ in FORBIDDEN])
def test_workflow_doing_unrepeatable_things_fails_with_nondeterminism(fn: Any, needle: str) -> None:
    log = LogBuilder("unit_loop_forbidden").start()
    instance = instance_for("run-forbidden", log, fn)
    instance.feed(log)
    decision = instance.decide()
    assert decision.commands == []
    assert isinstance(decision.outcome, Failed)
    error = decision.outcome.error
    assert type(error) is NonDeterminismError
    assert needle in str(error), str(error)
    assert "not allowed inside workflow code" in str(error)
    instance.close()


def test_sleep_zero_is_allowed() -> None:
    async def wf() -> str:
        for _ in range(3):
            await asyncio.sleep(0)
        return "ok"

    log = LogBuilder("unit_loop_sleep0").start()
    instance = instance_for("run-sleep0", log, wf)
    instance.feed(log)
    assert instance.decide().outcome == Completed("ok")


def test_loop_clock_is_the_time_of_the_event_being_replayed() -> None:
    async def wf() -> float:
        return asyncio.get_running_loop().time()

    builder = LogBuilder("unit_loop_clock")
    log = builder.start()
    instance = instance_for("run-clock", log, wf)
    instance.feed(log)
    assert instance.decide().outcome == Completed(log[1].ts / 1000.0)


# --- end to end: a workflow doing asyncio.sleep(1) ends as run_failed ----------------


@lf.workflow(name="unit_loop_sleeps")
async def sleeps_for_real() -> str:
    await asyncio.sleep(1)
    return "should not get here"


async def test_embedded_workflow_with_asyncio_sleep_ends_run_failed() -> None:
    async with lf.embedded(unique_namespace()) as client:
        started = time.monotonic()
        run = await client.start(sleeps_for_real)
        with pytest.raises(lf.WorkflowFailedError) as info:
            await run.result(timeout=5)
        assert time.monotonic() - started < 1.0  # failed at once, did not sleep
        assert info.value.type_name == "ledgerflow.NonDeterminismError"
        assert "asyncio.sleep()" in info.value.message
        assert "sleeps_for_real" in info.value.traceback_text
        events = await client.events(run.run_id)
        assert events[-1].type is EventType.RUN_FAILED
        assert events[-1].data["error"]["type"] == "ledgerflow.NonDeterminismError"
        tally = counts(events)
        assert tally["run_failed"] == 1
        assert tally["run_completed"] == 0
        assert (await client.state(run.run_id)).status == "failed"


@pytest.mark.parametrize(
    ("which", "named"),
    [
        ("time", "time.time()"),
        ("monotonic", "time.monotonic()"),
        ("sleep", "time.sleep()"),
        ("random", "random.random()"),
        ("uuid4", "uuid.uuid4()"),
    ],
)
async def test_wall_clock_and_randomness_fail_inside_workflow_code(which: str, named: str) -> None:
    import time as real_time

    from ledgerflow.scheduler.embedded import embedded

    from tests.apps.waiting import reads_clock

    async with embedded(f"unit-clock-{which}") as client:
        run = await client.start(reads_clock, which)
        with pytest.raises(lf.WorkflowFailedError) as info:
            await run.result(timeout=5)
    assert info.value.type_name == "ledgerflow.NonDeterminismError"
    assert named in info.value.message
    assert real_time.time() > 0  # outside workflow code the clock still works
