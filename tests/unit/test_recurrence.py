"""When ticks fall (cron in a time zone, DST included; intervals) and which due ticks fire."""

from __future__ import annotations

import datetime as dt

import pytest
from ledgerflow.eventlog.errors import InvalidArgumentError
from ledgerflow.eventlog.schedules import Missed
from ledgerflow.scheduler import recurrence
from ledgerflow.scheduler.recurrence import GRACE_MS, Recurrence, plan

BERLIN = "Europe/Berlin"


def ms(*when: int) -> int:
    """A UTC time as ms."""
    return int(dt.datetime(*when, tzinfo=dt.UTC).timestamp() * 1000)  # type: ignore[misc]


def local(tick: int, zone: str = BERLIN) -> str:
    return dt.datetime.fromtimestamp(tick / 1000, recurrence.zone(zone)).isoformat()


def walk(rule: Recurrence, start: int, count: int) -> list[int]:
    ticks = [rule.after(start)]
    while len(ticks) < count:
        ticks.append(rule.after(ticks[-1]))
    return ticks


# --- intervals --------------------------------------------------------------------------


def test_an_interval_ticks_at_its_multiples_since_the_epoch() -> None:
    every_2s = Recurrence(every_ms=2_000)
    assert every_2s.after(ms(2026, 1, 1, 0, 0, 0) + 1) == ms(2026, 1, 1, 0, 0, 2)
    assert every_2s.after(ms(2026, 1, 1, 0, 0, 2)) == ms(2026, 1, 1, 0, 0, 4)  # strictly after
    hourly = Recurrence(every_ms=3_600_000)
    assert hourly.after(ms(2026, 3, 29, 0, 59, 59)) == ms(2026, 3, 29, 1)  # DST means nothing


def test_due_ticks_of_an_interval_are_counted_without_walking() -> None:
    rule = Recurrence(every_ms=1_000)
    first = ms(2026, 1, 1)
    due = rule.due(first, first + 30 * 86_400_000, keep=3)  # a month down: 2.6 million ticks
    assert due.count == 30 * 86_400 + 1
    assert due.newest == tuple(first + 30 * 86_400_000 - i * 1_000 for i in (2, 1, 0))
    assert rule.due(first, first - 1, keep=3).count == 0


# --- cron -------------------------------------------------------------------------------


def test_cron_ticks_in_its_time_zone_strictly_after_a_moment() -> None:
    rule = Recurrence.cron_in("0 3 * * *", BERLIN)
    tick = rule.after(ms(2026, 1, 10, 12))
    assert local(tick) == "2026-01-11T03:00:00+01:00"
    assert rule.after(tick) == tick + 86_400_000
    assert Recurrence.cron_in("0 3 * * *", "UTC").after(ms(2026, 1, 10, 12)) == ms(2026, 1, 11, 3)


def test_seconds_are_a_sixth_field_first() -> None:
    rule = Recurrence.cron_in("*/15 * * * * *", "UTC")
    assert walk(rule, ms(2026, 1, 1) + 1, 3) == [ms(2026, 1, 1, 0, 0, s) for s in (15, 30, 45)]


@pytest.mark.parametrize(
    ("macro", "expression"), [("@daily", "0 0 * * *"), ("@HOURLY", "0 * * * *")]
)
def test_cron_macros_are_their_expressions(macro: str, expression: str) -> None:
    assert Recurrence.cron_in(macro, "UTC").cron == expression


def test_a_daily_tick_in_the_skipped_hour_runs_when_the_clock_jumps() -> None:
    """02:30 Europe/Berlin on 2026-03-29 (02:00 -> 03:00) runs at 03:00 CEST, as cron does."""
    rule = Recurrence.cron_in("30 2 * * *", BERLIN)
    ticks = walk(rule, ms(2026, 3, 27, 12), 3)
    assert [local(t) for t in ticks] == [
        "2026-03-28T02:30:00+01:00",
        "2026-03-29T03:00:00+02:00",
        "2026-03-30T02:30:00+02:00",
    ]


def test_a_daily_tick_in_the_repeated_hour_runs_once() -> None:
    """02:30 Europe/Berlin on 2026-10-25 (03:00 -> 02:00) runs at the first 02:30 only."""
    rule = Recurrence.cron_in("30 2 * * *", BERLIN)
    ticks = walk(rule, ms(2026, 10, 23, 12), 3)
    assert [local(t) for t in ticks] == [
        "2026-10-24T02:30:00+02:00",
        "2026-10-25T02:30:00+02:00",
        "2026-10-26T02:30:00+01:00",
    ]
    # From inside the repeated hour (after the first 02:30), the next one is tomorrow's.
    assert local(rule.after(ms(2026, 10, 25, 1, 15))) == "2026-10-26T02:30:00+01:00"


def test_hourly_ticks_follow_the_clock_across_both_changes() -> None:
    rule = Recurrence.cron_in("0 * * * *", BERLIN)
    spring = walk(rule, ms(2026, 3, 28, 23, 30), 3)  # 00:30 CET
    assert [local(t) for t in spring] == [
        "2026-03-29T01:00:00+01:00",
        "2026-03-29T03:00:00+02:00",  # no 02:00 that day
        "2026-03-29T04:00:00+02:00",
    ]
    autumn = walk(rule, ms(2026, 10, 24, 23, 30), 3)  # 01:30 CEST
    assert [local(t) for t in autumn] == [
        "2026-10-25T02:00:00+02:00",
        "2026-10-25T02:00:00+01:00",  # 02:00 twice: every hour runs
        "2026-10-25T03:00:00+01:00",
    ]


def test_walking_from_any_moment_meets_the_same_ticks() -> None:
    """Two schedulers that start walking at different moments agree, DST days included."""
    rule = Recurrence.cron_in("30 2 * * *", BERLIN)
    ticks = walk(rule, ms(2026, 3, 20), 20) + walk(rule, ms(2026, 10, 20), 10)
    for tick in ticks:
        for offset in (1, 60_000, 3_599_999):
            following = rule.after(tick)
            assert rule.after(min(tick + offset, following - 1)) == following


def test_due_ticks_of_cron_are_walked_and_past_the_limit_found_walking_back() -> None:
    rule = Recurrence.cron_in("* * * * * *", "UTC")
    first = ms(2026, 1, 1)
    short = rule.due(first, first + 9_500, keep=2)
    assert (short.count, short.newest, short.exact) == (10, (first + 8_000, first + 9_000), True)
    long = rule.due(first, first + 86_400_000, keep=3)  # a day of seconds: past the walk limit
    assert not long.exact
    assert long.count > recurrence.WALK_LIMIT
    assert long.newest == (first + 86_398_000, first + 86_399_000, first + 86_400_000)


@pytest.mark.parametrize(
    ("cron", "error"),
    [
        ("61 * * * *", "Bad minute"),
        ("* * * *", "Wrong number of fields"),
        ("0 0 30 2 *", "invalid cron expression"),
        ("@reboot", "Wrong number of fields"),
    ],
)
def test_a_bad_cron_expression_is_refused_saying_why(cron: str, error: str) -> None:
    with pytest.raises(InvalidArgumentError, match=error):
        Recurrence.cron_in(cron, "UTC")


@pytest.mark.parametrize(
    "zone", ["Nowhere/City", "../../etc/passwd", "/etc/localtime", "", "x" * 65]
)
def test_an_unknown_or_hostile_time_zone_is_refused(zone: str) -> None:
    with pytest.raises(InvalidArgumentError, match="time zone"):
        Recurrence.cron_in("0 3 * * *", zone)


# --- which due ticks fire ----------------------------------------------------------------

EVERY_2S = Recurrence(every_ms=2_000)
T0 = ms(2026, 6, 1)


def test_one_due_tick_fires_however_the_policy_reads() -> None:
    for missed in (Missed(), Missed(3)):
        chosen = plan(EVERY_2S, T0, T0 + 300, missed)
        assert (chosen.fire, chosen.missed, chosen.resume_ms) == ((T0,), 0, T0 + 2_000)


def test_skip_fires_the_newest_due_tick_only() -> None:
    chosen = plan(EVERY_2S, T0, T0 + 10_500, Missed())  # 6 ticks due
    assert (chosen.fire, chosen.missed, chosen.newest_missed) == ((T0 + 10_000,), 5, T0 + 8_000)
    assert chosen.resume_ms == T0 + 12_000


def test_skip_lets_a_tick_past_the_grace_go() -> None:
    daily = Recurrence.cron_in("0 3 * * *", "UTC")
    tick = ms(2026, 6, 1, 3)
    on_time = plan(daily, tick, tick + GRACE_MS, Missed())
    assert on_time.fire == (tick,)
    late = plan(daily, tick, tick + GRACE_MS + 1, Missed())
    assert (late.fire, late.missed, late.newest_missed) == ((), 1, tick)
    assert late.resume_ms == ms(2026, 6, 2, 3)
    # Catching up fires it however late.
    assert plan(daily, tick, tick + 6 * 3_600_000, Missed(1)).fire == (tick,)


def test_catch_up_fires_the_newest_n_oldest_first() -> None:
    chosen = plan(EVERY_2S, T0, T0 + 10_500, Missed(3))
    assert chosen.fire == (T0 + 6_000, T0 + 8_000, T0 + 10_000)
    assert (chosen.missed, chosen.newest_missed, chosen.resume_ms) == (3, T0 + 4_000, T0 + 12_000)
    everything = plan(EVERY_2S, T0, T0 + 10_500, Missed(100))
    assert everything.fire == tuple(T0 + i * 2_000 for i in range(6))
    assert (everything.missed, everything.newest_missed) == (0, None)
