"""A worker's presence mark: that it is alive, and which runs it is running steps of.

Alive alone is not enough after a Redis failover. A step whose ``step_completed``
the failover lost is ``started`` in the log, its message long acked, and its
worker alive and well: without more, the reconciler cannot tell it from a long
step still running there, and leaves it alone for as long as that worker lives.
So each renewal of the mark also lists the runs the worker holds an attempt of
(from before its ``step_started`` append to after its outcome's append). A step
started longer ago than the mark's lifetime (so every live mark was written
after it started) whose run the mark does not list is not running there: its
outcome is lost, and it gets a new attempt.

The list is bounded: a worker holding more runs than ``MAX_LISTED_RUNS`` writes
the plain mark, which says only "alive", as workers before this did; readers
treat it as "running anything". A mark is read as hostile bytes: anything but a
well-formed list is read as the plain mark.
"""

from __future__ import annotations

from collections.abc import Collection

from .names import RUN_ID_RE

TTL_MS = 10_000
"""How long a presence mark outlives its last renewal (renewed every third of it)."""
RENEW_EVERY_S = TTL_MS / 3000
MAX_LISTED_RUNS = 1000
PLAIN = b"1"
_LISTED = b"runs\n"
_MAX_BYTES = len(_LISTED) + MAX_LISTED_RUNS * 201


def encode_mark(running: Collection[str] | None) -> bytes:
    """The mark's value: the runs held, or the plain mark if unknown or too many."""
    if running is None or len(running) > MAX_LISTED_RUNS:
        return PLAIN
    return _LISTED + "\n".join(sorted(running)).encode()


def decode_mark(raw: bytes | str) -> frozenset[str] | None:
    """The runs a mark lists; None for the plain mark (or anything not a valid list)."""
    data = raw.encode() if isinstance(raw, str) else raw
    if not data.startswith(_LISTED) or len(data) > _MAX_BYTES:
        return None
    try:
        text = data[len(_LISTED) :].decode("ascii")
    except UnicodeDecodeError:
        return None
    runs = text.split("\n") if text else []
    if len(runs) > MAX_LISTED_RUNS or not all(RUN_ID_RE.match(r) for r in runs):
        return None
    return frozenset(runs)
