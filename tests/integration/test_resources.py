"""lf.resource and lf.use on real servers: opened and closed on every way a step can end.

A worker-scoped resource opens once per worker and closes when the worker stops; an
attempt-scoped one opens for each attempt and closes when it ends: with a result, an
exception, its timeout, or the worker's shutdown in the middle of it. One that fails to
open fails the attempt, naming it, and the retry opens it again. Resources never reach
the log or a step message.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from ledgerflow.eventlog.events import EventType
from ledgerflow.scheduler.embedded import serving
from ledgerflow.scheduler.service import Scheduler
from ledgerflow.worker.registry import StepDef
from ledgerflow.worker.service import Worker

import ledgerflow as lf
from tests.apps import resources as rs

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def fresh_events() -> Iterator[None]:
    rs.EVENTS.clear()
    rs.FAIL_OPENS.clear()
    yield
    rs.EVENTS.clear()
    rs.FAIL_OPENS.clear()


def count(what: str, name: str) -> int:
    return rs.EVENTS.count((what, name))


async def test_a_worker_resource_opens_once_and_closes_when_the_worker_stops(
    backends: Any,
) -> None:
    async with serving(backends.store, backends.broker) as client:
        runs = [await client.start(rs.lookups, [f"k{i}", f"j{i}"]) for i in range(5)]
        results = [await run.result(timeout=20) for run in runs]
        assert results == [[f"k{i}:4", f"j{i}:4"] for i in range(5)]
        assert count("open", "rs_pool") == 1 and count("close", "rs_pool") == 0
        events = await client.events(runs[0].run_id)
    assert count("close", "rs_pool") == 1
    created = [e for e in events if e.type is EventType.STEP_CREATED]
    for event in created:  # only the key: the resource is not an argument
        args, kwargs = StepDef.decode_args(event.data["args"])
        assert len(args) == 1 and kwargs == {}


async def test_an_attempt_resource_closes_after_a_failure_and_opens_again_for_the_retry(
    running: lf.Client,
) -> None:
    run = await running.start(rs.flaky_wf, "a")
    assert await run.result(timeout=20) == "a on attempt 2"
    assert rs.EVENTS == [("open", "rs_session"), ("close", "rs_session")] * 2


async def test_an_attempt_resource_closes_when_the_step_times_out(running: lf.Client) -> None:
    run = await running.start(rs.slow_wf, 5.0)
    with pytest.raises(lf.WorkflowFailedError, match=r"StepTimeoutError|timed out"):
        await run.result(timeout=20)
    assert rs.EVENTS == [("open", "rs_session"), ("close", "rs_session")]


async def test_a_resource_that_fails_to_open_fails_the_attempt_naming_it(
    running: lf.Client,
) -> None:
    rs.FAIL_OPENS["rs_session"] = 1
    run = await running.start(rs.flaky_wf, "b")
    # Attempt 1 could not open its session (the step never ran); attempt 2 did.
    assert await run.result(timeout=20) == "b on attempt 2"
    failures = [
        e.data["error"]
        for e in await running.events(run.run_id)
        if e.type in (EventType.STEP_RETRYING, EventType.STEP_FAILED)
    ]
    assert failures[0]["type"].endswith("ResourceUnavailableError")
    assert "rs_session" in failures[0]["message"]
    assert "database is restarting" in failures[0]["message"]
    assert len(failures) == 1
    assert rs.EVENTS == [("open", "rs_session"), ("close", "rs_session")]


async def test_every_resource_closes_when_the_worker_stops_in_the_middle_of_a_step(
    backends: Any,
) -> None:
    worker = Worker(backends.store, backends.broker, concurrency=4)
    scheduler = Scheduler(backends.store, backends.broker)
    await worker.start()
    await scheduler.start()
    try:
        client = lf.Client(backends.store, backends.broker)
        run = await client.start(rs.both_wf, 30.0)
        for _ in range(200):
            if count("open", "rs_session"):
                break
            await asyncio.sleep(0.05)
        assert count("open", "rs_pool") == 1 and count("open", "rs_session") == 1
    finally:
        await scheduler.stop()
        await worker.stop(grace=0.2)  # the step is cut off: handed back, not finished
    assert count("close", "rs_session") == 1
    assert count("close", "rs_pool") == 1
    assert rs.EVENTS[-1] == ("close", "rs_pool")  # the attempt's first, the worker's last
    assert (await client.state(run.run_id)).status == "started"


async def test_a_step_called_outside_a_workflow_gets_its_resources_for_that_call() -> None:
    assert await rs.lookup("direct") == "direct:4"
    assert rs.EVENTS == [("open", "rs_pool"), ("close", "rs_pool")]


def test_passing_a_resource_is_refused_at_the_call_site() -> None:
    with pytest.raises(TypeError, match="'db', a resource"):
        rs.lookup.definition.encode_args(("k",), {"db": {"connections": 1}})
    with pytest.raises(lf.ConfigurationError, match=r"lf\.use"):
        lf.use("not a resource")  # type: ignore[arg-type]
    with pytest.raises(lf.ConfigurationError, match="scope"):
        lf.resource(scope="process")  # type: ignore[call-overload]
