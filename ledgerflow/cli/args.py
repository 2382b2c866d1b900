"""Argument types of the command line: a bad value is bad usage, exit code 2.

argparse turns the error into ``ledgerflow ...: error: argument run_id: <rule>``
and exit status 2, before anything connects to a server. Every command group
takes its types from here, so one rule (a run id, a port, seconds) is checked
the same way everywhere.
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import re
import time

from ledgerflow.eventlog.errors import InvalidArgumentError
from ledgerflow.eventlog.names import check_output_name, check_run_id
from ledgerflow.eventlog.outputs import check_position
from ledgerflow.eventlog.retention import parse_retention

_RELATIVE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def run_id_arg(text: str) -> str:
    try:
        return check_run_id(text)
    except InvalidArgumentError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def parse_since(text: str) -> int:
    """``--since``: a relative duration (``15m``, ``2h``, ``3d``, ``1w``, ``30s``) or an ISO time.

    An ISO time without a zone is taken as UTC, like every time this CLI prints.
    Raises ValueError (argparse turns it into a usage error, exit 2).
    """
    relative = _RELATIVE.match(text)
    if relative:
        seconds = float(relative.group(1)) * _UNIT_SECONDS[relative.group(2)]
        return int((time.time() - seconds) * 1000)
    try:
        when = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"--since {text!r}: use a duration like 15m, 2h, 3d or an ISO time"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return int(when.timestamp() * 1000)


def retention_arg(text: str) -> int:
    """An argparse type: a retention such as 7d, 12h or 30m, in ms (1 second to 100 years)."""
    try:
        return parse_retention(text, "--retention")
    except InvalidArgumentError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def port_number(text: str) -> int:
    """An argparse type: a TCP port, 0..65535 (0 where the option means "off" or "any")."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a port number (0 to 65535)")
    return value


def positive_float(text: str) -> float:
    """An argparse type: a finite number of seconds above zero (a timeout, an interval)."""
    return _seconds(text, allow_zero=False)


def non_negative_float(text: str) -> float:
    """An argparse type: a finite number of seconds, zero allowed (a grace period)."""
    return _seconds(text, allow_zero=True)


def _seconds(text: str, *, allow_zero: bool) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        bound = "0 or more" if allow_zero else "more than 0"
        raise argparse.ArgumentTypeError(f"{text} is not a number of seconds ({bound})")
    return value


MAX_COUNT = 10_000
"""The most rows one listing prints: a page, never a whole index or queue in memory."""


def bounded_count(text: str) -> int:
    """An argparse type: a positive count of at most ``MAX_COUNT`` rows."""
    value = positive_int(text)
    if value > MAX_COUNT:
        raise ValueError(f"{text} is over the limit of {MAX_COUNT}")
    return value


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError(f"{text} is not a positive integer")
    return value


def since_arg(text: str) -> int:
    """An argparse type: ``parse_since`` with its ValueError as a usage error."""
    try:
        return parse_since(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def before_arg(text: str) -> int:
    """``--before``: the same durations and ISO times as ``--since``, named as itself."""
    try:
        return parse_since(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).replace("--since", "--before", 1)) from None


def stream_name_arg(text: str) -> str:
    try:
        return check_output_name(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def start_arg(text: str) -> int:
    return check_position(int(text))
