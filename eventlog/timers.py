"""Entries of the timer index: what wakes a retrying step, a sleep or a heartbeat check.

Delays never sit in RabbitMQ. Each due time is a member of a sharded Redis
sorted set (score = due ms); the scheduler's timer loop claims due members
atomically under a lease, acts, and removes them. Members are plain strings so
any process can read them; the index is derived and the reconciler can rebuild
every entry from the log.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

import structlog

from .errors import InvalidArgumentError, MalformedMessageError
from .names import check_corr, check_run_id

log = structlog.get_logger("ledgerflow.timers")

SEP = "|"
_MEMBER_RE = re.compile(r"^([a-z]+)\|([^|]+)\|([^|]+)\|([0-9]{1,10})\|([0-9]{1,15})\Z")


class TimerKind(enum.StrEnum):
    STEP_RETRY = "retry"  # dispatch attempt `attempt` of step `corr`
    WAIT = "wait"  # complete wait `corr`
    HEARTBEAT = "hb"  # check that attempt `attempt` of step `corr` is still alive
    THROTTLE = "throttle"  # send attempt `attempt` of step `corr` again: its rate limit's turn


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
        """The entry ``member`` stands for; MalformedMessageError for anything else.

        As strict as the append script: the index is shared by every run, so an
        entry that slipped in some other way must be recognisable as foreign.
        """
        match = _MEMBER_RE.match(member)
        if match is None:
            raise MalformedMessageError(
                f"malformed timer entry {_shown(member)}: not kind|run|corr|attempt|timeout"
            )
        kind, run_id, corr, attempt, timeout = match.groups()
        try:
            return cls(
                TimerKind(kind), check_run_id(run_id), check_corr(corr), int(attempt), int(timeout)
            )
        except (ValueError, InvalidArgumentError) as exc:
            raise MalformedMessageError(f"malformed timer entry {_shown(member)}: {exc}") from None


def _shown(member: str) -> str:
    """An entry of unknown origin in a message or log line: escaped, and cut short."""
    text = repr(member)
    return text if len(text) <= 300 else f"{text[:280]}... ({len(member)} characters)"


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


def quarantined(member: str | bytes, error: Exception) -> None:
    """Say that a malformed entry was taken out of the index (by whoever claimed it).

    One foreign entry must never stop the claim of everyone else's timers: it is
    logged, escaped, and removed, and the claim carries on.
    """
    text = member.decode("utf-8", "backslashreplace") if isinstance(member, bytes) else member
    log.error("malformed timer entry removed", member=_shown(text), error=str(error))
