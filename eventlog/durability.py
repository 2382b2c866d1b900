"""How many copies of an appended event exist before the append is reported done.

Redis replicates asynchronously: a master answers a write before any replica has
it, so a master that dies right after answering can take acknowledged events with
it when its replica is promoted. ``LEDGERFLOW_REDIS_DURABILITY`` (or
``--redis-durability``) chooses what an append waits for:

- ``none`` (the default): the master's memory. Fastest; an acknowledged event can be
  lost in a failover (the window is the replication lag, usually under a
  millisecond) or in a crash of a master without replicas.
- ``replica[:N]``: ``WAIT N`` after the append, on the same connection, so the
  append is reported done only once N replicas (default 1) acknowledged it. A
  failover to one of them keeps every acknowledged event.
- ``aof[:N]``: ``WAITAOF 1 N``: the master's own append-only file is fsynced (and
  N replicas' too), so a crash and restart of the master keeps it. Needs Redis
  7.2 or later with ``appendonly yes``; checked when a process connects.

The wait runs on the connection that ran the append, right after it, because
``WAIT`` counts the writes of its own connection (a cluster pipeline sends both to
the node serving the run's slot). Every durable append also rewrites a small
**barrier** key in the run's slot, so the wait covers something even when the
script wrote nothing: an all-duplicate answer (a retry of an append whose first
attempt was written but not confirmed) is confirmed only once the first attempt's
writes are replicated too, since replication keeps the master's order.

When fewer copies than asked confirm within the timeout, the event **is** in the
master's log but the append raises ``NotReplicatedError``: a
ServiceUnavailableError, so it is retried with backoff like an outage (appends
are idempotent: a retry answers "duplicate" and waits again) and, if the copies
never come, surfaces as a failed append, never as a recorded one. A message whose
append failed is not acked, and is redelivered.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import structlog
from redis.asyncio.cluster import RedisCluster
from redis.commands.core import AsyncScript
from redis.exceptions import AskError, NoScriptError, ResponseError

from .errors import ConfigurationError, NotReplicatedError, ServiceUnavailableError
from .redis_client import RedisClient

log = structlog.get_logger("ledgerflow.durability")

TIMEOUT_MS = 1000
"""How long one append waits for its copies before it counts as not replicated."""
BARRIER_TTL_MS = 60_000
MAX_REPLICAS = 16
_REROUTES = 3
"""Attempts of one durable call on a cluster whose slot moved or whose node lacked the script."""


class DurabilityMode(enum.StrEnum):
    NONE = "none"
    REPLICA = "replica"
    AOF = "aof"


@dataclass(frozen=True)
class Durability:
    mode: DurabilityMode = DurabilityMode.NONE
    replicas: int = 0
    """Replicas that must confirm (``replica``: at least 1; ``aof``: may be 0)."""
    timeout_ms: int = TIMEOUT_MS

    @classmethod
    def parse(cls, text: str, where: str = "LEDGERFLOW_REDIS_DURABILITY") -> Durability:
        """``none``, ``replica``, ``replica:N``, ``aof`` or ``aof:N``; else a ConfigurationError."""
        name, colon, count = text.strip().lower().partition(":")
        try:
            mode = DurabilityMode(name or "none")
        except ValueError:
            raise ConfigurationError(
                f"{where}={text!r}: expected none, replica[:N] or aof[:N]"
            ) from None
        if mode is DurabilityMode.NONE:
            if colon:
                raise ConfigurationError(f"{where}={text!r}: none takes no count")
            return cls()
        low = 1 if mode is DurabilityMode.REPLICA else 0
        if not colon:
            return cls(mode, low)
        if not count.isdigit() or not low <= int(count) <= MAX_REPLICAS:
            raise ConfigurationError(
                f"{where}={text!r}: the count of replicas is a number from {low} to {MAX_REPLICAS}"
            )
        return cls(mode, int(count))

    @property
    def waits(self) -> bool:
        return self.mode is not DurabilityMode.NONE

    def __str__(self) -> str:
        if self.mode is DurabilityMode.NONE:
            return "none"
        return f"{self.mode.value}:{self.replicas}"

    def wait_command(self) -> list[Any]:
        if self.mode is DurabilityMode.REPLICA:
            return ["WAIT", self.replicas, self.timeout_ms]
        return ["WAITAOF", 1, self.replicas, self.timeout_ms]

    def short(self, reply: Any) -> str | None:
        """What ``wait_command``'s reply lacks, or None if the write has its copies."""
        if self.mode is DurabilityMode.REPLICA:
            got = int(reply)
            if got < self.replicas:
                return f"{got} of {self.replicas} replica(s) confirmed"
            return None
        local, remote = (int(n) for n in reply)
        if local < 1:
            return "the master's append-only file was not fsynced"
        if remote < self.replicas:
            return f"{remote} of {self.replicas} replica(s) fsynced their append-only file"
        return None


async def call_durably(
    client: RedisClient,
    durability: Durability,
    script: AsyncScript,
    keys: Sequence[str],
    args: Sequence[Any],
    barrier: str,
) -> Any:
    """``script``'s reply, once its writes (and everything before them) have their copies.

    ``barrier`` is a key in the same slot as ``keys``. Raises NotReplicatedError when
    the copies do not confirm within the timeout (the write itself stands).
    """
    if isinstance(client, RedisCluster):
        reply, confirmed = await _on_cluster(client, durability, script, keys, args, barrier)
    else:
        async with client.pipeline(transaction=False) as pipe:
            await script(keys=keys, args=args, client=pipe)
            pipe.set(barrier, b"1", px=BARRIER_TTL_MS)
            pipe.execute_command(*durability.wait_command())
            reply, _, confirmed = await pipe.execute()
    missing = durability.short(confirmed)
    if missing is not None:
        log.warning(
            "append not confirmed by its copies; it stands on the master and is retried",
            durability=str(durability),
            key=keys[0],
            missing=missing,
        )
        raise NotReplicatedError(
            f"append to {keys[0]!r} is on the Redis master but {missing} within "
            f"{durability.timeout_ms} ms (durability {durability})"
        )
    return reply


async def _on_cluster(
    client: RedisCluster,
    durability: Durability,
    script: AsyncScript,
    keys: Sequence[str],
    args: Sequence[Any],
    barrier: str,
) -> tuple[Any, Any]:
    """Script, barrier and wait in one pipeline to the node serving the keys' slot.

    Redirects are not followed inside the pipeline (the wait would stay behind on
    the old node): a moved slot is looked up again through the cluster client and
    the whole call repeated, and so is a node that did not have the script (a
    promoted replica starts with an empty script cache).
    """
    for _ in range(_REROUTES):
        node = client.get_node_from_key(keys[0])
        pipe = client.pipeline()
        pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
        pipe.execute_command("SET", barrier, b"1", "PX", BARRIER_TTL_MS)
        pipe.execute_command(*durability.wait_command(), target_nodes=node)
        reply, barrier_set, confirmed = await pipe.execute(
            raise_on_error=False, allow_redirections=False
        )
        first = next((r for r in (reply, barrier_set) if isinstance(r, Exception)), None)
        if isinstance(first, NoScriptError):
            await client.execute_command("SCRIPT LOAD", script.script, target_nodes=node)
            continue
        if isinstance(first, AskError):  # MOVED too: where does the slot live now?
            await client.exists(keys[0])
            continue
        if isinstance(first, Exception):
            raise first
        if isinstance(confirmed, Exception):  # the node went away, or refused the wait
            raise confirmed
        return reply, confirmed
    raise ServiceUnavailableError(
        f"the Redis Cluster kept redirecting appends to {keys[0]!r} ({_REROUTES} tries)"
    )


async def check_durability(client: RedisClient, durability: Durability, where: str) -> None:
    """At connect: a ConfigurationError if the servers cannot give what ``durability`` asks.

    ``where`` (the redacted server URL) is for the log line; the caller prefixes errors.

    ``aof`` needs WAITAOF (Redis 7.2) and ``appendonly yes`` on every master. A
    master with fewer live replicas than ``replica:N`` asks is only logged: one may
    be restarting, and appends wait for it (and fail, retried, until it is back).
    """
    if not durability.waits:
        return
    if durability.mode is DurabilityMode.AOF:
        probe: list[Any] = ["WAITAOF", 1, 0, 1]
    else:
        probe = ["WAIT", 0, 0]
    try:
        if isinstance(client, RedisCluster):
            replies: Any = await client.execute_command(*probe, target_nodes=RedisCluster.PRIMARIES)
            answers = list(replies.values()) if isinstance(replies, dict) else [replies]
        elif durability.mode is DurabilityMode.AOF:
            answers = [await client.waitaof(1, 0, 1)]
        else:
            answers = [await client.wait(0, 0)]
    except ResponseError as exc:
        text = str(exc)
        if "unknown command" in text.lower():
            raise ConfigurationError(
                f"durability {durability} needs WAITAOF (Redis 7.2 or later), which this "
                "server does not have: use replica[:N] or none"
            ) from exc
        raise ConfigurationError(f"durability {durability} cannot be used here: {text}") from exc
    if durability.mode is DurabilityMode.REPLICA:
        fewest = min(int(a) for a in answers)
        if fewest < durability.replicas:
            log.warning(
                "a Redis master has fewer live replicas than the durability asks; "
                "its appends will fail until they are back",
                durability=str(durability),
                replicas=fewest,
                where=where,
            )
