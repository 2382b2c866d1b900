"""Schedules fired by real ``ledgerflow scheduler`` processes on the real servers.

Every assertion is on run ids, counts and log lines, never on how long something
took: each wait has a generous deadline and ends as soon as what it waits for is
there.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from ledgerflow.eventlog.events import EventType
from ledgerflow.eventlog.records import RunCreated
from ledgerflow.eventlog.schedules import Schedule, parse_run_id, run_id_for
from ledgerflow.eventlog.store import EventStore
from ledgerflow.scheduler.schedules import find_schedule, set_paused

from ledgerflow.ops.faults import SCHEDULER_AFTER_SCHEDULE_RUN_STARTED
from ledgerflow.testing.fleet import Fleet, FleetProcess
from tests.processes import ROOT, cli, cli_env
from tests.servers import Servers

pytestmark = pytest.mark.integration

APP = "tests.apps.scheduled_code"
WORKFLOW = "sched_tick"
INFO = {"LEDGERFLOW_LOG_LEVEL": "info"}
DEADLINE = 90.0


@contextmanager
def fleet_of(servers: Servers, namespace: str) -> Iterator[Fleet]:
    log_dir = Path(tempfile.mkdtemp(prefix=f"lf-{namespace}-"))
    fleet = Fleet(cli_env(servers, namespace), log_dir, cwd=ROOT)
    try:
        yield fleet
    finally:
        fleet.stop_all()
        shutil.rmtree(log_dir, ignore_errors=True)


async def until(what: str, check: Callable[[], Awaitable[bool]], timeout: float = DEADLINE) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:g} s: {what}")
        await asyncio.sleep(0.2)


async def ticks_run(store: EventStore, schedule: str) -> list[int]:
    """The ticks of ``schedule`` that have a run, read from the runs' ids."""
    runs = await store.list_runs(workflow=WORKFLOW, limit=5000)
    parsed = [parse_run_id(r.run_id) for r in runs]
    return sorted(tick for name, tick in filter(None, parsed) if name == schedule)


def logged(
    procs: list[FleetProcess], event: str, *, last_start_only: bool = False
) -> list[dict[str, Any]]:
    """The JSON log lines of ``event`` the processes wrote (restarts included, unless
    ``last_start_only``: then only what the latest start of each wrote)."""
    found = []
    for proc in procs:
        lines = proc.log_lines()
        if last_start_only:
            marks = [i for i, line in enumerate(lines) if line.startswith("--- fleet: restart")]
            lines = lines[marks[-1] + 1 :] if marks else lines
        for line in lines:
            if line.startswith("{"):
                entry = json.loads(line)
                if entry.get("event") == event:
                    found.append(entry)
    return found


async def test_every_2s_fires_once_per_tick_across_two_schedulers_while_one_is_killed(
    servers: Servers, backends: Any
) -> None:
    """Scheduler A dies holding a tick's claim, its run started and the schedule not yet
    advanced (the fault point, then SIGKILL); B takes the tick over once the claim's lease
    runs out, finds the run there, and catches up; A comes back; each tick has one run."""
    store, names = backends.store, backends.names
    ns = names.namespace
    crash = {**INFO, "LEDGERFLOW_FAULTS": f"{SCHEDULER_AFTER_SCHEDULE_RUN_STARTED}:1"}
    with fleet_of(servers, ns) as fleet:
        first = fleet.add("scheduler", ["scheduler", APP], name="scheduler-a", env=crash)
        second = fleet.add("scheduler", ["scheduler", APP], name="scheduler-b", env=INFO)
        fleet.add("worker", ["worker", APP, "--concurrency", "4"])
        fleet.spawn(first)
        fleet.spawn(fleet.of("worker")[0])

        async def stranded() -> bool:
            """A tick's run exists, and the schedule still has that tick next."""
            found = await store.read_schedules(["every-2s"])
            if not found or not isinstance(found[0], Schedule):
                return False
            return found[0].next_ms in await ticks_run(store, "every-2s")

        await until("A started a tick's run and died before advancing", stranded)
        stranded_tick = (await find_schedule(store, "every-2s")).next_ms
        assert first.popen is not None
        first.popen.kill()  # SIGKILL
        first.popen.wait()
        fleet.spawn(second)

        def runs_at_least(n: int) -> Callable[[], Awaitable[bool]]:
            async def check() -> bool:
                return len(await ticks_run(store, "every-2s")) >= n

            return check

        await until("B took over and caught up", runs_at_least(4))
        first.env.pop("LEDGERFLOW_FAULTS")
        fleet.spawn(first)  # A is back, as a supervisor would restart it
        now = len(await ticks_run(store, "every-2s"))
        await until("two more ticks with both back", runs_at_least(now + 2))
        await set_paused(store, "every-2s", paused=True)
        ticks = await ticks_run(store, "every-2s")

        async def all_completed() -> bool:
            runs = await store.list_runs(workflow=WORKFLOW, limit=5000)
            return len(runs) >= len(ticks) and all(r.status == "completed" for r in runs)

        await until("every tick's run completed", all_completed)
        stopped = fleet.stop_all()
        assert all(s.clean for s in stopped), stopped
        started = logged([first, second], "schedule tick")
        by_b = {e["run_id"] for e in logged([second], "schedule tick")}

    ticks = await ticks_run(store, "every-2s")
    assert len(ticks) >= 6
    # No gap, no tick twice: one run per tick from the first to the last.
    assert ticks == list(range(ticks[0], ticks[-1] + 1, 2_000)), ticks
    schedule = await find_schedule(store, "every-2s")
    assert (schedule.runs, schedule.missed) == (len(ticks), 0)
    # Each tick was recorded by exactly one scheduler (the advance that landed); the
    # stranded one by B, which found its run already there.
    recorded = Counter(e["run_id"] for e in started if e["outcome"] == "started")
    assert set(recorded.values()) == {1}, recorded
    assert sorted(parse_run_id(r)[1] for r in recorded) == ticks  # type: ignore[index]
    assert run_id_for("every-2s", stranded_tick) in by_b
    for tick_run in recorded:
        events = await store.read(tick_run)
        kinds = Counter(e.type for e in events)
        assert kinds[EventType.RUN_CREATED] == 1 and kinds[EventType.RUN_COMPLETED] == 1
        record = events[0].record
        assert isinstance(record, RunCreated) and record.schedule is not None
        assert (record.schedule.name, run_id_for("every-2s", record.schedule.tick_ms)) == (
            "every-2s",
            tick_run,
        )


async def test_a_restart_catches_up_no_more_than_the_bound(servers: Servers, backends: Any) -> None:
    """Down for several ticks, a schedule with catch-up:3 fires the newest 3 of them."""
    store, names = backends.store, backends.names
    ns = names.namespace
    added = await asyncio.to_thread(
        cli,
        servers,
        ns,
        "schedules",
        "add",
        "catching",
        "--workflow",
        "sched_tick",
        "--args",
        '["catching"]',
        "--every",
        "1s",
        "--missed",
        "catch-up:3",
        "--overlap",
        "allow",
    )
    assert added.returncode == 0, added.stderr
    with fleet_of(servers, ns) as fleet:
        scheduler = fleet.add("scheduler", ["scheduler", "tests.apps.scheduled"], env=INFO)
        fleet.start_all()
        await until("a tick fired", lambda: _has_runs(store, 2))
        fleet.stop_all()
        last_before = (await ticks_run(store, "catching"))[-1]
        # Down: let at least six ticks pass with no scheduler.
        down_since = await store.now_ms()
        await until("six ticks passed", lambda: _now_past(store, down_since + 6_000), timeout=30)
        restarted_at = await store.now_ms()
        fleet.spawn(scheduler)
        await until("it caught up", lambda: _tick_after(store, restarted_at + 1_000))
        await set_paused(store, "catching", paused=True)
        fleet.stop_all()
        decisions = logged([scheduler], "schedule ticks missed", last_start_only=True)

    ticks = await ticks_run(store, "catching")
    after = [t for t in ticks if t > last_before]
    first_back = after[0]
    # What passed while down and was let go: no run for those ticks.
    gap = (first_back - last_before) // 1_000 - 1
    assert after == list(range(first_back, after[-1] + 1, 1_000)), after
    # The first claim saw every tick of the downtime due (all that passed before the
    # restart, at least) and fired exactly the newest three of them.
    passed = (restarted_at - last_before) // 1_000
    assert [(d["catching_up"], d["missed"]) for d in decisions] == [(3, gap)]
    assert gap >= passed - 3 >= 3
    schedule = await find_schedule(store, "catching")
    assert schedule.missed == gap
    assert schedule.runs == len(ticks)


async def _has_runs(store: EventStore, n: int) -> bool:
    return len(await ticks_run(store, "catching")) >= n


async def _now_past(store: EventStore, ms: int) -> bool:
    return await store.now_ms() >= ms


async def _tick_after(store: EventStore, ms: int) -> bool:
    return any(t >= ms for t in await ticks_run(store, "catching"))


async def test_a_paused_schedule_fires_nothing_until_resumed(
    servers: Servers, backends: Any
) -> None:
    store, ns = backends.store, backends.names.namespace
    for command in (
        ["schedules", "add", "held", "--workflow", "sched_tick", "--args", '["held"]'],
        ["schedules", "pause", "held"],
    ):
        extra = ["--every", "1s", "--overlap", "allow"] if command[1] == "add" else []
        done = await asyncio.to_thread(cli, servers, ns, *command, *extra)
        assert done.returncode == 0, done.stderr
    with fleet_of(servers, ns) as fleet:
        fleet.add("scheduler", ["scheduler", "tests.apps.scheduled"], env=INFO)
        fleet.start_all()
        await fleet.wait_until_consuming(servers.amqp_url, {backends.names.runs_queue: 1})
        began = await store.now_ms()
        await until("three ticks passed", lambda: _now_past(store, began + 3_000), timeout=30)
        assert await ticks_run(store, "held") == []
        held = await find_schedule(store, "held")
        assert (held.paused, held.runs, held.missed, held.last_tick_ms) == (True, 0, 0, None)
        resumed = await asyncio.to_thread(cli, servers, ns, "schedules", "resume", "held")
        assert resumed.returncode == 0, resumed.stderr
        await until("a tick after the resume", lambda: _held_ran(store))
    ticks = await ticks_run(store, "held")
    assert min(ticks) > began + 3_000  # nothing of the paused time was caught up


async def _held_ran(store: EventStore) -> bool:
    return bool(await ticks_run(store, "held"))
