"""Schedules in memory (the embedded default and fast tests): the Redis scripts' rules.

The same fields (as the same strings), the same compare-and-set and the same due
index, so the conformance suite holds both stores to one behaviour.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from . import schedules as sc
from .errors import InvalidArgumentError, ScheduleExistsError, ScheduleNotFoundError
from .names import check_schedule_name
from .schedules import (
    MAX_SCHEDULES,
    Advance,
    Claimed,
    PutOutcome,
    PutResult,
    Schedule,
    ScheduleSpec,
    Source,
    Unreadable,
    decode_schedule,
)

Clock = Callable[[], int]
"""The store's clock, in ms (the memory store's own)."""


class MemorySchedules:
    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self._hashes: dict[str, dict[str, str | bytes]] = {}
        self._due: dict[str, int] = {}

    def put(self, spec: ScheduleSpec, *, next_ms: int, replace: bool) -> PutResult:
        name = spec.name
        stored = self._hashes.get(name)
        before = str(stored.get(sc.SOURCE, "")) if stored is not None else ""
        previous = Source(before) if before in _SOURCES else None
        if stored is not None and not replace:
            raise ScheduleExistsError(
                f"schedule {name!r} exists already (declared by {before or 'unknown'}): "
                "delete it first, or replace it"
            )
        if stored is None and len(self._hashes) >= MAX_SCHEDULES:
            raise InvalidArgumentError(
                f"the namespace holds {MAX_SCHEDULES} schedules already: delete one first"
            )
        fields = stored if stored is not None else {}
        changed = moved = stored is None
        for field, value in spec.fields().items():
            if fields.get(field) != value:
                changed = True
                moved = moved or field in sc.RECURRENCE_FIELDS
                fields[field] = value
        moved = moved or sc.NEXT not in fields
        if not changed and not moved:
            return PutResult(PutOutcome.UNCHANGED, previous)
        now = str(self.clock())
        fields[sc.UPDATED] = now
        if stored is None:
            fields.update(
                {
                    sc.CREATED: now,
                    sc.PAUSED: "0",
                    sc.RUNS: "0",
                    sc.MISSED_COUNT: "0",
                    sc.OVERLAP_COUNT: "0",
                }
            )
            self._hashes[name] = fields
        if moved:
            fields[sc.NEXT] = str(next_ms)
            fields[sc.PLAN] = "0"
        if fields.get(sc.PAUSED) != "1":
            if moved:
                self._due[name] = next_ms
            else:
                self._due.setdefault(name, int(fields[sc.NEXT]))
        return PutResult(PutOutcome.CREATED if stored is None else PutOutcome.UPDATED, previous)

    def read(self, names: Sequence[str] | None) -> list[Schedule | Unreadable]:
        wanted = sorted(self._hashes if names is None else set(names))
        return [decode_schedule(n, dict(self._hashes[n])) for n in wanted if n in self._hashes]

    def delete(self, name: str) -> bool:
        check_schedule_name(name)
        self._due.pop(name, None)
        return self._hashes.pop(name, None) is not None

    def pause(self, name: str, *, paused: bool, next_ms: int) -> bool:
        fields = self._hashes.get(check_schedule_name(name))
        if fields is None:
            raise ScheduleNotFoundError(f"no schedule is named {name!r}")
        was = fields.get(sc.PAUSED) == "1"
        if paused:
            self._due.pop(name, None)
            if was:
                return False
            fields[sc.PAUSED] = "1"
            return True
        if not was:
            return False
        fields.update({sc.PAUSED: "0", sc.NEXT: str(next_ms), sc.PLAN: "0"})
        self._due[name] = next_ms
        return True

    def claim(self, limit: int, lease_ms: int) -> Claimed:
        now = self.clock()
        due = sorted((score, name) for name, score in self._due.items() if score <= now)[:limit]
        for _, name in due:
            self._due[name] = now + lease_ms
        return Claimed(
            now_ms=now,
            names=[name for _, name in due],
            earliest_ms=min(self._due.values()) if self._due else None,
        )

    def advance(self, name: str, expected_next: int, advance: Advance) -> bool:
        fields = self._hashes.get(name)
        if fields is None:
            self._due.pop(name, None)
            return False
        if fields.get(sc.NEXT) != str(expected_next):
            return False
        now = str(self.clock())
        args = advance.args()
        fields[sc.NEXT], fields[sc.PLAN] = args[0], args[1]
        if args[2]:
            fields.update({sc.TICK: args[2], sc.OUTCOME: args[3], sc.ACTED: now})
            if args[4]:
                fields[sc.RUN] = args[4]
        for field, increment in ((sc.RUNS, 5), (sc.MISSED_COUNT, 6), (sc.OVERLAP_COUNT, 7)):
            fields[field] = str(int(fields.get(field, "0")) + int(args[increment]))
        if args[8]:
            fields[sc.MISSED_TICK] = args[8]
        if fields.get(sc.PAUSED) == "1":
            self._due.pop(name, None)
        else:
            self._due[name] = advance.next_ms
        return True

    def drop_claim(self, name: str) -> None:
        self._due.pop(name, None)

    def lag(self) -> int:
        if not self._due:
            return 0
        return max(0, self.clock() - min(self._due.values()))


_SOURCES = frozenset(s.value for s in Source)
