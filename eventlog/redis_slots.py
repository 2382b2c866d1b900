"""Concurrency slots on Redis: one script call per acquire or release, in the pair's own slot.

The index of pairs (``Names.slot_index``) is a namespace key in another slot, so it
is written beside the script, not in it: a pair missing from it is found again the
next time a step of it parks (and a waiter's step, if stuck, by the reconciler's
lost-step check, which sends its message again).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .errors import RetryableError
from .lua import ACQUIRE_SLOT_SCRIPT, RELEASE_SLOT_SCRIPT
from .names import Names
from .redis_client import RedisClient, call_scripts
from .retrying import retried
from .slots import MAX_PROMOTE, MAX_WAITING, SlotKind, SlotUse, slot_id

INDEXED_CACHE = 10_000
"""Pairs this process remembers having listed in the index (then it lists them again)."""


def _kind(value: Any) -> SlotKind:
    """A pair's kind as stored (an unknown one, or none: written before kinds, a step)."""
    try:
        return SlotKind(_text(value)) if value is not None else SlotKind.STEP
    except ValueError:
        return SlotKind.STEP


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisSlots:
    def __init__(self, client: RedisClient, names: Names) -> None:
        self.client = client
        self.names = names
        self._acquire = client.register_script(ACQUIRE_SLOT_SCRIPT)
        self._release = client.register_script(RELEASE_SLOT_SCRIPT)
        self._indexed: set[str] = set()

    def _keys(self, slot: str) -> list[str]:
        n = self.names
        return [
            n.slot_holders(slot),
            n.slot_waiting(slot),
            n.slot_messages(slot),
            n.slot_info(slot),
        ]

    @retried("take a concurrency slot")
    async def acquire(
        self,
        limit: str,
        key: str,
        member: str,
        capacity: int,
        lease_ms: int,
        message: bytes,
        kind: SlotKind = SlotKind.STEP,
    ) -> tuple[bool, list[bytes]]:
        slot = slot_id(limit, key)
        argv: list[Any] = [
            member,
            capacity,
            lease_ms,
            message,
            limit,
            key,
            MAX_WAITING,
            MAX_PROMOTE,
            kind.value,
        ]
        reply: Any = await self._acquire(keys=self._keys(slot), args=argv)
        verdict = int(reply[0])
        if verdict != 1 or slot not in self._indexed:
            # Listed once per process (a parked member always: the sweep must find it).
            await self.client.sadd(self.names.slot_index(), slot)
            if len(self._indexed) >= INDEXED_CACHE:
                self._indexed.clear()
            self._indexed.add(slot)
        if verdict == -1:
            raise RetryableError(
                f"{MAX_WAITING} steps already wait for concurrency limit {limit!r} key {key!r}",
                retry_after=5.0,
            )
        return verdict == 1, [bytes(m) for m in reply[1:]]

    @retried("free a concurrency slot")
    async def release(
        self, limit: str, key: str, member: str, capacity: int, lease_ms: int
    ) -> list[bytes]:
        reply: Any = await self._release(
            keys=self._keys(slot_id(limit, key)), args=[member, capacity, lease_ms, MAX_PROMOTE]
        )
        return [bytes(m) for m in reply[1:]]

    @retried("renew concurrency slots")
    async def renew(self, held: Sequence[tuple[str, str, str]], lease_ms: int) -> None:
        if not held:
            return
        now_ms = await self._now_ms()
        async with self.client.pipeline(transaction=False) as pipe:
            for limit, key, member in held:
                holders = self.names.slot_holders(slot_id(limit, key))
                pipe.zadd(holders, {member: now_ms + lease_ms}, xx=True)
            await pipe.execute()

    async def _now_ms(self) -> int:
        seconds, micros = await self.client.time()
        return int(seconds) * 1000 + int(micros) // 1000

    @retried("read concurrency slots")
    async def uses(self) -> list[SlotUse]:
        pairs = await self._pairs()
        if not pairs:
            return []
        async with self.client.pipeline(transaction=False) as pipe:
            for pair in pairs:
                pipe.zcard(self.names.slot_holders(pair.slot))
                pipe.zcard(self.names.slot_waiting(pair.slot))
            counts: list[Any] = await pipe.execute()
        found = []
        for pair, holding, waiting in zip(pairs, counts[::2], counts[1::2], strict=True):
            if holding or waiting:
                found.append(SlotUse(pair.limit, pair.key, int(holding), int(waiting), pair.kind))
        return found

    @retried("read the runs holding slots")
    async def run_holders(self) -> list[tuple[str, str, str, int]]:
        pairs = [p for p in await self._pairs() if p.kind is SlotKind.RUN]
        if not pairs:
            return []
        async with self.client.pipeline(transaction=False) as pipe:
            for pair in pairs:
                pipe.zrange(self.names.slot_holders(pair.slot), 0, -1)
            holders: list[Any] = await pipe.execute()
        return [
            (pair.limit, pair.key, _text(member), pair.capacity)
            for pair, members in zip(pairs, holders, strict=True)
            for member in members
        ]

    async def promote(self, lease_ms: int) -> list[bytes]:
        # A pair never written whole (or by hand) has no capacity: nothing to promote into.
        pairs = [p for p in await self._pairs() if p.capacity >= 1]
        calls = [(self._keys(p.slot), ["", p.capacity, lease_ms, MAX_PROMOTE]) for p in pairs]
        replies = await call_scripts(self.client, self._release, calls)
        promoted: list[bytes] = []
        for pair, reply in zip(pairs, replies, strict=True):
            promoted += [bytes(m) for m in reply[1:]]
            if int(reply[0]) == 1:
                await self.client.srem(self.names.slot_index(), pair.slot)
        return promoted

    async def _pairs(self) -> list[_Pair]:
        """Every listed (limit, key) with its info, in one pipelined read."""
        slots = sorted(_text(s) for s in await self.client.smembers(self.names.slot_index()))
        if not slots:
            return []
        async with self.client.pipeline(transaction=False) as pipe:
            for slot in slots:
                pipe.hmget(self.names.slot_info(slot), ["limit", "key", "kind", "capacity"])
            infos: list[Any] = await pipe.execute()
        pairs = []
        for slot, (limit, key, kind, capacity) in zip(slots, infos, strict=True):
            if limit is None:
                continue
            cap = int(capacity) if capacity is not None and _text(capacity).isdigit() else 0
            pairs.append(_Pair(slot, _text(limit), _text(key or b""), _kind(kind), cap))
        return pairs


@dataclass(frozen=True, slots=True)
class _Pair:
    """A listed (limit, key): its slot id and what its info hash says."""

    slot: str
    limit: str
    key: str
    kind: SlotKind
    capacity: int
