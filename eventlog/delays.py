"""The one bound on every delay ledgerflow records: sleeps, timeouts and retry delays.

A delay ends up as a due time in the Redis timer index (a score, a double) and in
the log (a msgpack integer): infinity, NaN or 1e300 seconds can be neither, and
a run waiting on one would never wake. So every delay is checked where it is
given, against one bound; the append script refuses anything past it too.
"""

from __future__ import annotations

import datetime as dt
import decimal
import math
import numbers

from .errors import InvalidArgumentError

MAX_DELAY_S = 100 * 365.25 * 86_400
"""100 years: longer than any workflow waits, far inside what a score or an int64 holds."""
MAX_DELAY_MS = int(MAX_DELAY_S * 1000)
MAX_DUE_MS = 253_402_300_799_999
"""9999-12-31T23:59:59.999Z: the latest absolute due time an append accepts."""


def delay_seconds(value: object, what: str) -> float:
    """``value`` as seconds within [0, MAX_DELAY_S]; negative counts as 0.

    Raises InvalidArgumentError, naming ``what`` and the rule, for anything else:
    a non-number (a bool or a string included), NaN, an infinity, or more than
    100 years.
    """
    seconds = _as_seconds(value, what)
    if not math.isfinite(seconds) or seconds > MAX_DELAY_S:
        raise InvalidArgumentError(
            f"{what} of {_shown(value)} cannot be honoured: a delay is a finite number of "
            f"seconds up to {MAX_DELAY_S:.0f} (100 years)"
        )
    return max(0.0, seconds)


def delay_ms(value: object, what: str) -> int:
    """:func:`delay_seconds` in whole milliseconds, as the timer index takes them."""
    return min(MAX_DELAY_MS, int(delay_seconds(value, what) * 1000))


def _as_seconds(value: object, what: str) -> float:
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, (numbers.Real, decimal.Decimal)):
        raise InvalidArgumentError(
            f"{what} must be a number of seconds or a timedelta, not {type(value).__name__}"
        )
    try:
        return float(value)
    except (OverflowError, ValueError, decimal.InvalidOperation):
        return math.inf  # an int too large for a float, a signalling NaN: out of range


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:50]}..."
