"""Declaring schedules (lf.schedule), their checks, run ids, and how code and Redis agree."""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

import pytest
from ledgerflow.eventlog.errors import (
    ConfigurationError,
    InvalidArgumentError,
    PayloadTooLargeError,
    ScheduleExistsError,
    ScheduleNotFoundError,
)
from ledgerflow.eventlog.memory_store import MemoryEventStore
from ledgerflow.eventlog.names import Names
from ledgerflow.eventlog.schedules import (
    MAX_CALL_BYTES,
    Missed,
    Overlap,
    PutOutcome,
    Schedule,
    Source,
    parse_run_id,
    run_id_for,
)
from ledgerflow.scheduler import schedules as schedules_module
from ledgerflow.scheduler.schedules import (
    ScheduleRegistry,
    add_schedule,
    build_spec,
    find_schedule,
    remove_schedule,
    set_paused,
    sync_declared,
)

import ledgerflow as lf

from .helpers import unique_namespace


@lf.workflow(name="sched_report")
async def report(day: str, *, full: bool = False) -> str:
    return day


@pytest.fixture
def declared(monkeypatch: pytest.MonkeyPatch) -> ScheduleRegistry:
    """A registry of this test's own in place of the process's (lf.schedule adds there)."""
    fresh = ScheduleRegistry()
    monkeypatch.setattr(schedules_module, "schedules", fresh)
    return fresh


def test_lf_schedule_declares_a_checked_schedule(declared: ScheduleRegistry) -> None:
    spec = lf.schedule(
        report, cron="0 3 * * *", timezone="Europe/Berlin", args=["today"], catch_up=2
    )
    assert declared.names() == ["sched_report"]
    assert (spec.name, spec.workflow, spec.cron, spec.timezone) == (
        "sched_report",
        "sched_report",
        "0 3 * * *",
        "Europe/Berlin",
    )
    assert (spec.missed, spec.overlap, spec.source) == (Missed(2), Overlap.SKIP, Source.CODE)
    assert spec.arguments() == (["today"], {})
    every = lf.schedule(
        report, every=dt.timedelta(minutes=5), args=["x"], kwargs={"full": True}, name="often"
    )
    assert (every.every_s, every.cron, every.timezone) == (300, "", "UTC")
    assert sorted(declared.names()) == ["often", "sched_report"]
    # The same declaration again (a module imported twice) is the same schedule.
    lf.schedule(report, every=300, args=["x"], kwargs={"full": True}, name="often")
    with pytest.raises(ConfigurationError, match="two different schedules"):
        lf.schedule(report, every=60, args=["x"], name="often")


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"args": ["d"]}, "either cron= or every="),
        ({"args": ["d"], "cron": "0 3 * * *", "every": 60}, "either cron= or every="),
        ({"args": ["d"], "every": 60, "timezone": "Europe/Berlin"}, "time zone applies"),
        ({"args": ["d"], "every": 0.5}, "whole seconds"),
        ({"args": ["d"], "every": 0}, "whole seconds"),
        ({"args": ["d"], "every": -60}, "whole seconds"),
        ({"args": ["d"], "every": math.nan}, "whole seconds"),
        ({"args": ["d"], "every": True}, "whole seconds"),
        ({"args": ["d"], "every": dt.timedelta(days=400)}, "whole seconds"),
        ({"args": ["d"], "cron": "61 * * * *"}, "Bad minute"),
        ({"args": ["d"], "cron": 5}, "cron must be a string"),
        ({"args": ["d"], "cron": "0 3 * * *", "timezone": "Mars/Olympus"}, "unknown time zone"),
        ({"args": ["d"], "every": 60, "name": "a:b"}, "invalid schedule name"),
        ({"args": ["d"], "every": 60, "overlap": "queue"}, "overlap must be"),
        ({"args": ["d"], "every": 60, "catch_up": 101}, "catch up 0"),
        ({"args": ["d"], "every": 60, "catch_up": -1}, "catch up 0"),
        ({"args": [], "every": 60}, "bad arguments"),
        ({"args": ["d"], "kwargs": {"nope": 1}, "every": 60}, "bad arguments"),
        ({"args": ["d" * (MAX_CALL_BYTES + 1)], "every": 60}, "over the"),
        ({"args": [object()], "every": 60}, "argument 'day'"),
    ],
)
def test_a_bad_declaration_fails_at_import_saying_what(
    declared: ScheduleRegistry, options: dict[str, Any], error: str
) -> None:
    with pytest.raises(ConfigurationError, match=error):
        lf.schedule(report, **options)
    assert len(declared) == 0


def test_a_workflow_whose_name_cannot_name_a_schedule_asks_for_a_name() -> None:
    with pytest.raises(InvalidArgumentError, match="pass name="):
        build_spec(None, "make_report.<locals>.inner", every=60)
    assert build_spec("inner", "make_report.<locals>.inner", every=60).name == "inner"


def test_a_workflow_named_but_not_known_here_is_taken_unchecked() -> None:
    spec = build_spec("elsewhere", "other.app.wf", every=60, args=[1, 2, 3])
    assert (spec.workflow, spec.arguments()) == ("other.app.wf", ([1, 2, 3], {}))
    with pytest.raises(InvalidArgumentError, match="not printable"):
        build_spec("bad", "wf\x1b[2J", every=60)
    with pytest.raises(InvalidArgumentError, match="invalid workflow name"):
        build_spec("bad", "", every=60)
    assert build_spec("unicode", "rapport_été", every=60).workflow == "rapport_été"
    with pytest.raises(PayloadTooLargeError):
        build_spec("big", "other", every=60, kwargs={"x": b"0" * MAX_CALL_BYTES})


def test_a_ticks_run_id_names_the_schedule_and_the_tick() -> None:
    tick = int(dt.datetime(2026, 3, 29, 1, 0, tzinfo=dt.UTC).timestamp() * 1000)
    run_id = run_id_for("nightly-report.v2", tick)
    assert run_id == "sched:nightly-report.v2:20260329T010000Z"
    assert parse_run_id(run_id) == ("nightly-report.v2", tick)
    longest = run_id_for("x" * 64, tick)
    assert parse_run_id(longest) == ("x" * 64, tick)
    for other in (
        "run-1",
        "sched:a",
        "sched:a:b",
        "sched::20260329T010000Z",
        "x:a:20260329T010000Z",
    ):
        assert parse_run_id(other) is None
    assert parse_run_id("sched:a:20261399T010000Z") is None  # month 13


@pytest.mark.parametrize(
    ("text", "policy"),
    [("skip", Missed()), ("catch-up:3", Missed(3)), ("catch_up:100", Missed(100))],
)
def test_missed_tick_policies_parse(text: str, policy: Missed) -> None:
    assert Missed.parse(text) == policy
    assert Missed.parse(policy.text) == policy


@pytest.mark.parametrize("text", ["", "catch-up", "catch-up:0", "catch-up:101", "catchup:3", 3])
def test_a_bad_missed_tick_policy_is_refused(text: object) -> None:
    with pytest.raises(InvalidArgumentError, match="catch"):
        Missed.parse(text)


# --- managing stored schedules ------------------------------------------------------------


def store() -> MemoryEventStore:
    return MemoryEventStore(Names(unique_namespace()))


async def test_adding_schedules_them_from_their_next_tick_and_refuses_a_taken_name() -> None:
    memory = store()
    spec = build_spec("often", report, every=60, args=["d"])
    now = await memory.now_ms()
    assert (await add_schedule(memory, spec)).outcome is PutOutcome.CREATED
    found = await find_schedule(memory, "often")
    assert now < found.next_ms <= now + 60_000 and found.next_ms % 60_000 == 0
    with pytest.raises(ScheduleExistsError):
        await add_schedule(memory, spec)
    assert (await add_schedule(memory, spec, replace=True)).outcome is PutOutcome.UNCHANGED
    with pytest.raises(ScheduleNotFoundError):
        await find_schedule(memory, "missing")


async def test_a_resumed_schedule_starts_at_its_next_tick_after_now() -> None:
    memory = store()
    spec = build_spec("often", report, every=2, args=["d"])
    await memory.put_schedule(spec, next_ms=1_000)  # long overdue
    assert await set_paused(memory, "often", paused=True)
    assert not await set_paused(memory, "often", paused=True)
    assert await set_paused(memory, "often", paused=False)
    found = await find_schedule(memory, "often")
    assert not found.paused
    assert found.next_ms > await memory.now_ms() - 1  # what passed while paused is not caught up
    with pytest.raises(ScheduleNotFoundError):
        await set_paused(memory, "missing", paused=False)


async def test_a_schedule_declared_in_code_is_deleted_only_with_force() -> None:
    memory = store()
    await add_schedule(memory, build_spec("cli", report, every=60, args=["d"]))
    await add_schedule(memory, build_spec("code", report, every=60, args=["d"], source=Source.CODE))
    await remove_schedule(memory, "cli")
    with pytest.raises(InvalidArgumentError, match="declared in code"):
        await remove_schedule(memory, "code")
    await remove_schedule(memory, "code", force=True)
    assert await memory.read_schedules() == []
    with pytest.raises(ScheduleNotFoundError):
        await remove_schedule(memory, "code")


async def test_syncing_writes_the_codes_schedules_and_keeps_where_they_stand() -> None:
    memory = store()
    code = ScheduleRegistry()
    code.add(build_spec("nightly", report, cron="0 3 * * *", args=["d"], source=Source.CODE))
    code.add(build_spec("often", report, every=60, args=["d"], source=Source.CODE))
    # Already in Redis: one the CLI added under a name the code now declares, one the
    # code declared before and no longer does, and one of the CLI's own.
    await add_schedule(memory, build_spec("often", report, every=5, args=["old"]))
    await add_schedule(memory, build_spec("gone", report, every=5, args=["d"], source=Source.CODE))
    await add_schedule(memory, build_spec("mine", report, every=5, args=["d"]))

    report_ = await sync_declared(memory, code)
    assert report_.written == {"nightly": PutOutcome.CREATED, "often": PutOutcome.UPDATED}
    assert report_.deleted == ["gone"]
    stored = {s.name: s for s in await memory.read_schedules() if isinstance(s, Schedule)}
    assert sorted(stored) == ["mine", "nightly", "often"]
    assert stored["often"].spec == code_spec(code, "often")  # the code wins
    assert stored["mine"].spec.source is Source.CLI  # the CLI's own are never touched

    # A deploy keeps a pause, and an unchanged definition writes nothing.
    await set_paused(memory, "nightly", paused=True)
    again = await sync_declared(memory, code)
    assert set(again.written.values()) == {PutOutcome.UNCHANGED}
    assert (await find_schedule(memory, "nightly")).paused


def code_spec(registry: ScheduleRegistry, name: str) -> Any:
    return next(spec for spec in registry if spec.name == name)
