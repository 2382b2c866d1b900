"""Concurrency slots in memory: the Redis scripts' rules, for the embedded default and tests."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from .errors import RetryableError
from .slots import MAX_PROMOTE, MAX_WAITING, SlotKind, SlotUse, check_slot


@dataclass
class _Pair:
    limit: str
    key: str
    capacity: int = 0
    kind: SlotKind = SlotKind.STEP
    holders: dict[str, int] = field(default_factory=dict)  # member -> lease expiry ms
    waiting: dict[str, bytes] = field(default_factory=dict)  # member -> message, in order

    def drop_expired(self, now: int) -> None:
        for member in [m for m, due in self.holders.items() if due <= now]:
            del self.holders[member]

    def promote(self, capacity: int, lease_ms: int, now: int, skip: str) -> list[bytes]:
        out: list[bytes] = []
        most = MAX_PROMOTE
        while most > 0 and len(self.holders) < capacity and self.waiting:
            member = next(iter(self.waiting))
            message = self.waiting.pop(member)
            self.holders[member] = now + lease_ms
            if member != skip:
                out.append(message)
            most -= 1
        return out


def _now_ms() -> int:
    return int(time.time() * 1000)


class MemorySlots:
    def __init__(self) -> None:
        self._pairs: dict[tuple[str, str], _Pair] = {}

    def _pair(self, limit: str, key: str) -> _Pair:
        check_slot(limit, key)
        pair = self._pairs.get((limit, key))
        if pair is None:
            pair = self._pairs[(limit, key)] = _Pair(limit, key)
        return pair

    def acquire(
        self,
        limit: str,
        key: str,
        member: str,
        capacity: int,
        lease_ms: int,
        message: bytes,
        kind: SlotKind = SlotKind.STEP,
    ) -> tuple[bool, list[bytes]]:
        pair, now = self._pair(limit, key), _now_ms()
        pair.capacity, pair.kind = capacity, kind
        pair.drop_expired(now)
        promoted = pair.promote(capacity, lease_ms, now, member)
        if member in pair.holders or (not pair.waiting and len(pair.holders) < capacity):
            pair.holders[member] = now + lease_ms
            return True, promoted
        if member not in pair.waiting and len(pair.waiting) >= MAX_WAITING:
            raise RetryableError(
                f"{MAX_WAITING} steps already wait for concurrency limit {limit!r} key {key!r}",
                retry_after=5.0,
            )
        pair.waiting[member] = message
        return False, promoted

    def release(
        self, limit: str, key: str, member: str, capacity: int, lease_ms: int
    ) -> list[bytes]:
        pair, now = self._pair(limit, key), _now_ms()
        pair.holders.pop(member, None)
        pair.waiting.pop(member, None)
        pair.drop_expired(now)
        return pair.promote(capacity, lease_ms, now, "")

    def renew(self, held: Sequence[tuple[str, str, str]], lease_ms: int) -> None:
        now = _now_ms()
        for limit, key, member in held:
            pair = self._pairs.get((limit, key))
            if pair is not None and member in pair.holders:
                pair.holders[member] = now + lease_ms

    def uses(self) -> list[SlotUse]:
        return [
            SlotUse(p.limit, p.key, len(p.holders), len(p.waiting), p.kind)
            for _, p in sorted(self._pairs.items())
            if p.holders or p.waiting
        ]

    def run_holders(self) -> list[tuple[str, str, str, int]]:
        return [
            (p.limit, p.key, member, p.capacity)
            for p in self._pairs.values()
            if p.kind is SlotKind.RUN
            for member in p.holders
        ]

    def promote(self, lease_ms: int) -> list[bytes]:
        promoted: list[bytes] = []
        now = _now_ms()
        for (limit, key), pair in list(self._pairs.items()):
            pair.drop_expired(now)
            promoted += pair.promote(pair.capacity, lease_ms, now, "")
            if not pair.holders and not pair.waiting:
                del self._pairs[(limit, key)]
        return promoted
