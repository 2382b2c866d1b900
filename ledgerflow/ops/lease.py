"""A Redis lease with a fencing token: exactly one holder acts at a time.

Acquiring takes a fresh token from a counter that only grows, stored with the
lease as ``owner|token``. A holder that was paused past its TTL (a GC pause, a
frozen VM) finds on its next check that the lease names another token, and
must not act: every action is preceded by ``check()``.
"""

from __future__ import annotations

from dataclasses import dataclass

from ledgerflow.eventlog.names import Names
from ledgerflow.eventlog.redis_client import RedisClient

_ACQUIRE = """
local current = redis.call('GET', KEYS[1])
if current then
  if string.sub(current, 1, string.len(ARGV[1]) + 1) == ARGV[1] .. '|' then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return current
  end
  return false
end
local token = redis.call('INCR', KEYS[2])
local value = ARGV[1] .. '|' .. token
redis.call('SET', KEYS[1], value, 'PX', ARGV[2])
return value
"""

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


@dataclass
class Holding:
    owner: str
    token: int

    @property
    def value(self) -> str:
        return f"{self.owner}|{self.token}"


class Lease:
    def __init__(self, client: RedisClient, names: Names, owner: str, ttl_ms: int) -> None:
        self._keys = [names.reconciler_lease(), names.reconciler_fence()]
        self.owner = owner
        self.ttl_ms = ttl_ms
        self.holding: Holding | None = None
        self._acquire = client.register_script(_ACQUIRE)
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)

    async def acquire(self) -> bool:
        raw = await self._acquire(keys=self._keys, args=[self.owner, self.ttl_ms])
        if not raw:
            self.holding = None
            return False
        value = raw.decode() if isinstance(raw, bytes) else str(raw)
        owner, _, token = value.rpartition("|")
        self.holding = Holding(owner=owner, token=int(token))
        return True

    async def check(self) -> bool:
        """Still ours (and extended)? Call before every action."""
        if self.holding is None:
            return False
        ok = await self._renew(keys=self._keys[:1], args=[self.holding.value, self.ttl_ms])
        if not ok:
            self.holding = None
        return bool(ok)

    async def release(self) -> None:
        if self.holding is not None:
            await self._release(keys=self._keys[:1], args=[self.holding.value])
            self.holding = None
