"""How long a finished run is kept: the one rule for a retention, wherever it is given.

A retention is given as a ``timedelta`` (``@lf.workflow(retention=...)``), as
seconds, or as text such as ``7d`` (``--retention``, ``LEDGERFLOW_RETENTION``).
It is stored in milliseconds: in run_created's data, in the status hash (``ret``)
and as the offset of the run's score in the expire index. It must be positive
(a run removed the moment it finishes could not even be read by the producer
waiting for its result) and at most the bound every delay has (100 years).
"""

from __future__ import annotations

import datetime as dt
import math

from .delays import MAX_DELAY_MS
from .errors import InvalidArgumentError

MIN_RETENTION_MS = 1_000
"""One second: the least a finished run is kept, so a waiter can read its outcome."""
MAX_RETENTION_MS = MAX_DELAY_MS

_UNITS_MS = {"ms": 1, "s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}


def retention_ms(value: object, what: str = "retention") -> int:
    """``value`` (a timedelta or seconds) as whole milliseconds within the bounds."""
    if isinstance(value, dt.timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    else:
        raise InvalidArgumentError(
            f"{what} must be a timedelta or a number of seconds, not {type(value).__name__}"
        )
    return checked_ms(seconds * 1000 if math.isfinite(seconds) else math.inf, what)


def checked_ms(ms: float, what: str = "retention") -> int:
    """A retention in ms, refused (naming ``what``) unless it lies within the bounds."""
    if not (math.isfinite(ms) and MIN_RETENTION_MS <= ms <= MAX_RETENTION_MS):
        raise InvalidArgumentError(
            f"{what} must be between 1 second and 100 years (got {_shown(ms)})"
        )
    return int(ms)


def parse_retention(text: str, what: str = "retention") -> int:
    """A retention written as ``<number><unit>`` (ms, s, m, h, d, w; e.g. 7d, 12h, 30m) in ms."""
    raw = text.strip().lower()
    for unit in sorted(_UNITS_MS, key=len, reverse=True):
        if raw.endswith(unit) and raw[: -len(unit)].strip():
            number = raw[: -len(unit)].strip()
            try:
                amount = float(number)
            except ValueError:
                break
            return checked_ms(amount * _UNITS_MS[unit], what)
    raise InvalidArgumentError(
        f"{what} {text!r} is not a duration: use a number and a unit, e.g. 7d, 12h, 30m, 90s"
    )


def _shown(ms: float) -> str:
    if not math.isfinite(ms):
        return "an unbounded value"
    return f"{ms / 1000:g} seconds"
