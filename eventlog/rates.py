"""Rate limits: at most ``rate`` starts per period per (limit, key), kept in Redis.

The generic cell rate algorithm, applied to actual starts (``go``): a start is
allowed only when the starts so far conform to ``rate`` with ``burst``, so no
window ever holds more than the rate allows, however late wake-ups come. Each
step that must wait is given a turn in arrival order (``tat`` moves on by one
interval per ask) and that instant is reserved for it, so waiters come back one
at a time, not as a herd at each refill. One that comes back late, next to the
turn after it (the timer loop, RabbitMQ and a worker lie between), is moved to
the next conforming instant rather than let in beside it. Starts may come up to
half an interval early against the last one (or the burst's allowance, if more),
so late wake-ups catch up: the rate holds on average and no window of ``w`` ms
holds more than ``w / interval + burst + 1`` starts.

A reservation whose step never comes back (its worker died between the ask and
arming its timer) stays until the bucket expires, idle past its last turn plus a
day; the step itself is sent again by the reconciler and goes on its reservation.
"""

from __future__ import annotations

import hashlib
from abc import abstractmethod
from typing import Final, Protocol

from .slots import check_slot

IDLE_TTL_MS: Final = 86_400_000


def rate_id(limit: str, key: str) -> str:
    """The (limit, key) pair's key suffix: bounded, brace-free, its own cluster slot."""
    check_slot(limit, key)
    return hashlib.sha1(f"{limit}\0{key}".encode(), usedforsecurity=False).hexdigest()[:20]


class Rates(Protocol):
    @abstractmethod
    async def take_rate(
        self, limit: str, key: str, member: str, interval_ms: float, burst: int
    ) -> int:
        """0 if ``member`` may start now, else the ms until its reserved turn."""
