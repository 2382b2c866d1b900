"""Parallel steps in a timeline: lanes taken at step_started, freed at the outcome."""

from __future__ import annotations

from ledgerflow.eventlog.events import Event, EventType

from ledgerflow.cli.args import parse_since
from ledgerflow.cli.format import table
from ledgerflow.ops.timeline import render, timeline


def ev(n: int, type: EventType, corr: str = "", **data: object) -> Event:
    return Event(id=f"{n}-0", type=type, corr=corr, data=dict(data), ts=1000 + n)


def test_overlapping_steps_get_lanes_and_sequential_ones_share_one() -> None:
    events = [
        ev(1, EventType.RUN_CREATED, workflow="w", args=[]),
        ev(2, EventType.RUN_STARTED),
        ev(3, EventType.STEP_CREATED, "s1", name="a"),
        ev(4, EventType.STEP_CREATED, "s2", name="b"),
        ev(5, EventType.STEP_STARTED, "s1", attempt=1),
        ev(6, EventType.STEP_STARTED, "s2", attempt=1),
        ev(7, EventType.STEP_COMPLETED, "s1", attempt=1, result=1),
        ev(8, EventType.STEP_COMPLETED, "s2", attempt=1, result=2),
        ev(9, EventType.STEP_CREATED, "s3", name="c"),
        ev(10, EventType.STEP_STARTED, "s3", attempt=1),
        ev(11, EventType.STEP_COMPLETED, "s3", attempt=1, result=3),
    ]
    rows = timeline(events)
    assert [r.lane for r in rows[4:8]] == [0, 1, 0, 1]
    assert rows[5].running == (0, 1)  # s2 starts while s1 runs
    assert rows[6].running == (0, 1)  # s1 completes while s2 still runs
    assert rows[7].running == (1,)
    assert rows[9].lane == 0 and rows[9].running == (0,)  # s3 alone, back in lane 0
    text = render(rows).splitlines()
    assert text[0].split()[:3] == ["#", "+ms", "par"]
    assert " *| " in text[2 + 6] or "*|" in text[2 + 6]  # row 7: s1 done, s2 running
    assert "|*" in text[2 + 5]  # row 6: s2 starts next to s1
    assert text[-1].startswith("par: *")


def test_a_sequential_run_has_a_single_lane_and_no_legend() -> None:
    events = [
        ev(1, EventType.RUN_CREATED, workflow="w", args=[]),
        ev(2, EventType.STEP_CREATED, "s1", name="a"),
        ev(3, EventType.STEP_STARTED, "s1", attempt=1),
        ev(4, EventType.STEP_RETRYING, "s1", attempt=1, error={"type": "E", "message": "m"}),
        ev(5, EventType.STEP_STARTED, "s1", attempt=2),
        ev(6, EventType.STEP_COMPLETED, "s1", attempt=2, result=1),
    ]
    rows = timeline(events)
    assert max(len(r.running) for r in rows) == 1
    assert not render(rows).splitlines()[-1].startswith("par:")


def test_since_accepts_durations_and_iso_times() -> None:
    assert parse_since("2000-01-01T00:00:00") == 946684800000
    assert parse_since("2000-01-01T01:00:00+01:00") == 946684800000
    assert abs(parse_since("2h") - (parse_since("1h") - 3600_000)) < 2000
    for bad in ("yesterday", "5x", ""):
        try:
            parse_since(bad)
        except ValueError:
            continue
        raise AssertionError(f"{bad!r} was accepted")


def test_table_aligns_and_cuts_long_cells() -> None:
    text = table(("A", "LONG"), [("x", "y" * 100), ("xyz", 1)]).splitlines()
    assert text[0] == "A    LONG"
    assert text[2].startswith("x    yyy") and text[2].endswith("...")
    assert text[3] == "xyz  1"
