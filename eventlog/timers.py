"""Entries of the timer index: what wakes a retrying step, a sleep or a heartbeat check.

Delays never sit in RabbitMQ. Each due time is a member of a sharded Redis
sorted set (score = due ms); the scheduler's timer loop claims due members
atomically under a lease, acts, and removes them. Members are plain strings so
any process can read them; the index is derived and the reconciler can rebuild
every entry from the log.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from .errors import MalformedMessageError

SEP = "|"


class TimerKind(enum.StrEnum):
    STEP_RETRY = "retry"  # dispatch attempt `attempt` of step `corr`
    WAIT = "wait"  # complete wait `corr`
    HEARTBEAT = "hb"  # check that attempt `attempt` of step `corr` is still alive


@dataclass(frozen=True, slots=True)
class Timer:
    kind: TimerKind
    run_id: str
    corr: str
    attempt: int = 0
    timeout_ms: int = 0

    @property
    def member(self) -> str:
        return SEP.join(
            [self.kind.value, self.run_id, self.corr, str(self.attempt), str(self.timeout_ms)]
        )

    @classmethod
    def parse(cls, member: str) -> Timer:
        parts = member.split(SEP)
        if len(parts) != 5:
            raise MalformedMessageError(f"malformed timer entry {member!r}")
        kind, run_id, corr, attempt, timeout = parts
        try:
            return cls(TimerKind(kind), run_id, corr, int(attempt), int(timeout))
        except ValueError as exc:
            raise MalformedMessageError(f"malformed timer entry {member!r}: {exc}") from None


@dataclass(frozen=True, slots=True)
class DueTimer:
    timer: Timer
    due: int
    lease: int


@dataclass(frozen=True, slots=True)
class EntityStatus:
    """One entity as the status hash sees it, plus what timer handlers need."""

    run_state: str
    kind: str
    state: str
    attempt: int
    created_id: str | None
    heartbeat: int | None
    now: int
    workflow: str = ""  # the run's workflow name, for log lines
