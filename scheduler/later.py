"""Time in a run's life the producer or the workflow names: a delayed start, a deadline.

Both become ordinary durable waits at the start of the workflow's code, decided
from what the log records (``run_created``'s ``start_at``, ``run_started``'s
``timeout_ms``), so a replay makes the same decisions whatever the clock or the
code's current settings say, and the timer index wakes the run after any restart.
"""

from __future__ import annotations

import datetime as dt
import time

from ledgerflow.eventlog.delays import MAX_DELAY_MS, MAX_DUE_MS, delay_ms
from ledgerflow.eventlog.errors import InvalidArgumentError


def start_time_ms(start_at: dt.datetime | None, delay: dt.timedelta | float | None) -> int | None:
    """``client.start``'s ``start_at`` / ``delay`` as an epoch-ms time (None: at once)."""
    if start_at is not None and delay is not None:
        raise InvalidArgumentError("give start_at or delay, not both")
    if delay is not None:
        return int(time.time() * 1000) + delay_ms(delay, "start delay")
    if start_at is None:
        return None
    if not isinstance(start_at, dt.datetime):
        raise InvalidArgumentError(f"start_at must be a datetime, not {type(start_at).__name__}")
    if start_at.tzinfo is None or start_at.utcoffset() is None:
        raise InvalidArgumentError(
            "start_at must be timezone-aware (a naive time means a different instant on "
            "every host): use datetime(..., tzinfo=...) or .astimezone()"
        )
    when = int(start_at.timestamp() * 1000)
    if not 0 <= when <= MAX_DUE_MS:
        raise InvalidArgumentError(f"start_at {start_at.isoformat()} is out of range")
    return when


def wait_until_ms(now_ms: int, until_ms: int | None) -> int:
    """How long to wait from ``now_ms`` for ``until_ms`` (a recorded, so hostile, value)."""
    if until_ms is None or until_ms <= now_ms:
        return 0
    return min(until_ms - now_ms, MAX_DELAY_MS)


def recorded_timeout_ms(value: int | None) -> int | None:
    """A timeout read back from a log: a positive number of ms within the delay bound."""
    if value is None or value < 1:
        return None
    return min(value, MAX_DELAY_MS)
