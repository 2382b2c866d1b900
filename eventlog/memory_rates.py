"""Rate limits in memory: the script's rules, for the embedded default and tests."""

from __future__ import annotations

import math
import time

from .slots import check_slot


class MemoryRates:
    """The script's rules in memory (the embedded default and tests)."""

    def __init__(self) -> None:
        self._tat: dict[tuple[str, str], float] = {}
        self._go: dict[tuple[str, str], float] = {}
        self._reserved: dict[tuple[str, str, str], int] = {}

    def take(self, limit: str, key: str, member: str, interval_ms: float, burst: int) -> int:
        check_slot(limit, key)
        now = int(time.time() * 1000)
        pair, tau = (limit, key), (burst - 1) * interval_ms
        slack = max(tau, interval_ms / 2)  # late wake-ups catch up (see the script)
        go = self._go.get(pair, 0.0)
        reserved = self._reserved.get((limit, key, member))
        if reserved is not None:
            at: float = reserved
        else:
            tat = max(self._tat.get(pair, 0.0), float(now))
            self._tat[pair] = tat + interval_ms
            at = tat - tau
        if at <= now and now >= go - slack:
            self._go[pair] = max(go, float(now)) + interval_ms
            self._reserved.pop((limit, key, member), None)
            return 0
        turn = max(math.ceil(max(at, go - slack)), now + 1)
        self._reserved[(limit, key, member)] = turn
        return turn - now
