"""What removing a run must clean up beyond its own keys: the timer entries its log implies.

A run's timer entries sit in a shard of the timer index shared by every run.
The timer loop removes an entry once it acts on it, but a finished run can leave
some behind (a heartbeat check of its last step, a retry or a wait made moot by
a cancellation). Removal takes every entry the log could have armed out of the
index in the same atomic step, so nothing of the run outlives it there.
"""

from __future__ import annotations

from collections.abc import Sequence

from .events import Event, EventType
from .records import StepRetrying, StepStarted
from .timers import Timer, TimerKind


def implied_timer_members(run_id: str, events: Sequence[Event]) -> list[str]:
    """Every timer member the run's log may have armed: retries, waits and heartbeat checks.

    The same members the writers build (worker/outcome.py, worker/service.py,
    scheduler/service.py); removing one that is not armed is harmless.
    """
    members: dict[str, None] = {}
    for event in events:
        record = event.record
        if event.type is EventType.WAIT_CREATED:
            members[Timer(TimerKind.WAIT, run_id, event.corr).member] = None
        elif event.type is EventType.STEP_RETRYING and isinstance(record, StepRetrying):
            attempt = event.attempt or 0
            members[Timer(TimerKind.STEP_RETRY, run_id, event.corr, attempt + 1).member] = None
        elif (
            event.type is EventType.STEP_STARTED
            and isinstance(record, StepStarted)
            and record.heartbeat_timeout is not None
        ):
            timeout_ms = int(record.heartbeat_timeout * 1000)
            timer = Timer(TimerKind.HEARTBEAT, run_id, event.corr, event.attempt or 0, timeout_ms)
            members[timer.member] = None
    return list(members)
