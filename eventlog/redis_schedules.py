"""Schedules on Redis: a hash per schedule, the due index and the name set, in one slot.

Every key carries the namespace's schedules tag (``Names.schedules_tag``), so each
script (put, delete, pause, claim, advance) is one atomic call on a Redis Cluster
as on one Redis. Reads of many hashes go in one pipeline.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .errors import InvalidArgumentError, ScheduleExistsError, ScheduleNotFoundError
from .lua import (
    ADVANCE_SCHEDULE_SCRIPT,
    CLAIM_SCHEDULES_SCRIPT,
    DELETE_SCHEDULE_SCRIPT,
    PAUSE_SCHEDULE_SCRIPT,
    PUT_SCHEDULE_SCRIPT,
    SCHEDULE_LAG_SCRIPT,
)
from .names import Names, check_schedule_name
from .redis_client import RedisClient
from .retrying import retried
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


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisSchedules:
    """``ScheduleStore`` on the Redis that holds the namespace's runs."""

    def __init__(self, client: RedisClient, names: Names) -> None:
        self.client = client
        self.names = names
        self._put = client.register_script(PUT_SCHEDULE_SCRIPT)
        self._delete = client.register_script(DELETE_SCHEDULE_SCRIPT)
        self._pause = client.register_script(PAUSE_SCHEDULE_SCRIPT)
        self._claim = client.register_script(CLAIM_SCHEDULES_SCRIPT)
        self._advance = client.register_script(ADVANCE_SCHEDULE_SCRIPT)
        self._lag = client.register_script(SCHEDULE_LAG_SCRIPT)

    def _keys(self, name: str) -> list[str]:
        return [
            self.names.schedule(check_schedule_name(name)),
            self.names.schedule_due(),
            self.names.schedule_names(),
        ]

    @retried("write a schedule")
    async def put(self, spec: ScheduleSpec, *, next_ms: int, replace: bool) -> PutResult:
        fields = spec.fields()
        argv: list[Any] = [spec.name, "1" if replace else "0", MAX_SCHEDULES, next_ms, len(fields)]
        for field, value in fields.items():
            argv += [field, value]
        reply = await self._put(keys=self._keys(spec.name), args=argv)
        verdict, before = _text(reply[0]), _text(reply[1])
        previous = Source(before) if before in _SOURCES else None
        if verdict == "exists":
            raise ScheduleExistsError(
                f"schedule {spec.name!r} exists already (declared by {before or 'unknown'}): "
                "delete it first, or replace it"
            )
        if verdict == "full":
            raise InvalidArgumentError(
                f"the namespace holds {MAX_SCHEDULES} schedules already: delete one first"
            )
        return PutResult(PutOutcome(verdict), previous)

    @retried("read schedules")
    async def read(self, names: Sequence[str] | None) -> list[Schedule | Unreadable]:
        if names is None:
            raw: Any = await self.client.smembers(self.names.schedule_names())
            wanted = sorted(_text(n) for n in raw)
        else:
            wanted = sorted(set(names))
        # A member no schedule could have (written around ledgerflow) is shown, not followed.
        found: dict[str, Schedule | Unreadable] = {
            name: Unreadable(name, "not a schedule name") for name in wanted if not _valid(name)
        }
        valid = [name for name in wanted if name not in found]
        if valid:
            async with self.client.pipeline(transaction=False) as pipe:
                for name in valid:
                    pipe.hgetall(self.names.schedule(name))
                hashes: list[Any] = await pipe.execute()
            for name, fields in zip(valid, hashes, strict=True):
                if fields:
                    found[name] = decode_schedule(name, fields)
        return [found[name] for name in sorted(found)]

    @retried("delete a schedule")
    async def delete(self, name: str) -> bool:
        return bool(await self._delete(keys=self._keys(name), args=[name]))

    @retried("pause or resume a schedule")
    async def pause(self, name: str, *, paused: bool, next_ms: int) -> bool:
        keys = self._keys(name)[:2]
        verdict = _text(await self._pause(keys=keys, args=[name, "1" if paused else "0", next_ms]))
        if verdict == "notfound":
            raise ScheduleNotFoundError(f"no schedule is named {name!r}")
        return verdict == "changed"

    async def claim(self, limit: int, lease_ms: int) -> Claimed:
        """Not retried: the schedule loop backs off and claims again itself."""
        reply: Any = await self._claim(keys=[self.names.schedule_due()], args=[limit, lease_ms])
        earliest = _text(reply[1])
        return Claimed(
            now_ms=int(_text(reply[0])),
            names=[_text(n) for n in reply[2:]],
            earliest_ms=int(float(earliest)) if earliest else None,
        )

    @retried("advance a schedule")
    async def advance(self, name: str, expected_next: int, advance: Advance) -> bool:
        keys = self._keys(name)[:2]
        reply = await self._advance(keys=keys, args=[name, str(expected_next), *advance.args()])
        return _text(reply) == "ok"

    @retried("drop a schedule's claim")
    async def drop_claim(self, name: str) -> None:
        await self.client.zrem(self.names.schedule_due(), name)

    async def lag(self) -> int:
        """Not retried: the metrics sampler bounds it with a timeout and tries again later."""
        return int(await self._lag(keys=[self.names.schedule_due()], args=[]))


_SOURCES = frozenset(s.value for s in Source)


def _valid(name: str) -> bool:
    """A name from the set that could be a schedule's (anything else was not written by us)."""
    try:
        check_schedule_name(name)
    except InvalidArgumentError:
        return False
    return True
