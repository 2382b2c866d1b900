"""When a schedule's ticks fall, and which of the ticks due now it fires.

Cron expressions are read by cronsim, which reads them as Debian's cron does, in
the schedule's IANA time zone (zoneinfo). Its DST rules are the ones cron users
know: a daily job at 02:30 Europe/Berlin runs at 03:00 CEST on the day the clocks
skip 02:00-03:00, and once (at the first 02:30) on the day they repeat it; jobs
that run every hour or more often are scheduled by the clock as it is (no 02:xx
tick on the spring day, two on the autumn day). Five fields, or six with seconds
first, and the ``@hourly``, ``@daily``, ``@weekly``, ``@monthly``, ``@yearly`` names.

An interval (``every``) ticks at whole multiples of it since the Unix epoch, in
UTC: every hour on the hour, every 2 s on even seconds. So every scheduler, and
every deploy that declares the schedule again, agrees on the ticks with nothing
stored but the interval.

Every tick is a whole second, found as "the first tick strictly after" a moment,
so two schedulers that walk from different moments meet on the same ticks.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Final
from zoneinfo import ZoneInfo

from cronsim import CronSim, CronSimError
from ledgerflow.eventlog.errors import InvalidArgumentError
from ledgerflow.eventlog.schedules import Missed, ScheduleSpec, check_timezone_name

GRACE_MS: Final = 60_000
"""Under the ``skip`` policy, a due tick this late or less still fires: it is late, not missed."""
WALK_LIMIT: Final = 1000
"""Missed ticks counted one by one at most; past that the newest are found walking back."""
MACROS: Final = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_TRIES = 4
"""Results cronsim may give at or before its start (a DST fold) before one is after it."""


def zone(name: str) -> ZoneInfo:
    """The IANA time zone ``name``; InvalidArgumentError if this host knows none by it."""
    check_timezone_name(name)
    try:
        return ZoneInfo(name)
    except (KeyError, ValueError, OSError):
        raise InvalidArgumentError(
            f"unknown time zone {name!r}: use an IANA name such as Europe/Berlin or UTC"
        ) from None


@dataclass(frozen=True, slots=True)
class Due:
    """The ticks due between a schedule's next tick and now."""

    count: int
    """How many (at least this many when not ``exact``)."""
    newest: tuple[int, ...]
    """The newest of them, oldest first (as many as asked for)."""
    exact: bool = True


@dataclass(frozen=True, slots=True)
class Plan:
    """Which due ticks a schedule fires now, under its missed-tick policy."""

    fire: tuple[int, ...]
    """Oldest first; empty when the policy lets every due tick go."""
    missed: int
    """Due ticks let go (a lower bound when ``exact`` is False)."""
    newest_missed: int | None
    resume_ms: int
    """The first tick after now: the schedule's next one once ``fire`` is done."""
    exact: bool = True


@dataclass(frozen=True, slots=True)
class Recurrence:
    """A cron expression in a time zone, or an interval (ms); built checked by ``of``."""

    cron: str = ""
    timezone: str = "UTC"
    every_ms: int = 0

    @classmethod
    def of(cls, spec: ScheduleSpec) -> Recurrence:
        """The recurrence of ``spec``, checked: a cron that parses and ever fires, a known zone."""
        if spec.every_s:
            return cls(every_ms=spec.every_s * 1000)
        return cls.cron_in(spec.cron, spec.timezone)

    @classmethod
    def cron_in(cls, cron: str, timezone: str) -> Recurrence:
        expression = MACROS.get(cron.strip().lower(), cron)
        tz = zone(timezone)
        try:
            next(CronSim(expression, dt.datetime.now(tz)))
        except CronSimError as exc:
            raise InvalidArgumentError(f"invalid cron expression {cron!r}: {exc}") from None
        except StopIteration:
            raise InvalidArgumentError(
                f"cron expression {cron!r} never fires (no tick within 50 years)"
            ) from None
        return cls(cron=expression, timezone=timezone)

    def after(self, ms: int) -> int:
        """The first tick strictly after ``ms``."""
        if self.every_ms:
            return (ms // self.every_ms + 1) * self.every_ms
        tz = zone(self.timezone)
        ticks = CronSim(self.cron, dt.datetime.fromtimestamp(ms / 1000, tz))
        for _ in range(_TRIES):
            tick = _ms(next(ticks, None), self.cron)
            if tick > ms:  # cronsim may give one before its start on a DST fold: not ours
                return tick
        raise InvalidArgumentError(f"cron expression {self.cron!r} gives no tick after {ms}")

    def due(self, first: int, now: int, keep: int) -> Due:
        """The ticks from ``first`` (a tick) up to ``now``: how many, and the newest ``keep``."""
        if first > now:
            return Due(0, ())
        keep = max(1, keep)
        if self.every_ms:
            count = (now - first) // self.every_ms + 1
            start = count - min(keep, count)
            return Due(count, tuple(first + i * self.every_ms for i in range(start, count)))
        walked = [first]
        while len(walked) < WALK_LIMIT:
            tick = self.after(walked[-1])
            if tick > now:
                return Due(len(walked), tuple(walked[-keep:]))
            walked.append(tick)
        if self.after(walked[-1]) > now:
            return Due(len(walked), tuple(walked[-keep:]))
        # Down for longer than WALK_LIMIT ticks: the newest, walking back from now.
        newest = self._before(now, keep, floor=walked[-1])
        return Due(len(walked) + len(newest), tuple(newest), exact=False)

    def _before(self, now: int, keep: int, floor: int) -> list[int]:
        """Up to ``keep`` ticks in (floor, now], oldest first."""
        tz = zone(self.timezone)
        ticks = CronSim(self.cron, dt.datetime.fromtimestamp((now + 1) / 1000, tz), reverse=True)
        found: list[int] = []
        while len(found) < keep:
            tick = _ms(next(ticks, None), self.cron)
            if tick <= floor:
                break
            if tick <= now and (not found or tick < found[-1]):
                found.append(tick)
        return found[::-1]


def plan(recurrence: Recurrence, next_ms: int, now_ms: int, missed: Missed) -> Plan:
    """Which of the ticks due at ``now_ms`` (from ``next_ms`` on) fire, by the policy.

    ``skip``: the newest due tick, if it is at most ``GRACE_MS`` late; no other.
    ``catch_up:N``: the newest N due ticks, oldest of them first. Either way the
    rest are missed, and the schedule resumes at the first tick after now.
    """
    # One more than may fire: the newest tick let go, when one is.
    due = recurrence.due(next_ms, now_ms, max(1, missed.catch_up) + 1)
    resume = recurrence.after(now_ms)
    if not due.newest:
        return Plan((), 0, None, resume)
    if missed.catch_up:
        fire = due.newest[-missed.catch_up :]
    else:
        newest = due.newest[-1]
        fire = (newest,) if now_ms - newest <= GRACE_MS else ()
    let_go = due.count - len(fire)
    newest_missed = due.newest[-len(fire) - 1] if let_go else None
    return Plan(fire, let_go, newest_missed, resume, exact=due.exact)


def _ms(tick: dt.datetime | None, cron: str) -> int:
    if tick is None:
        raise InvalidArgumentError(f"cron expression {cron!r} has no more ticks")
    return round(tick.timestamp() * 1000)
