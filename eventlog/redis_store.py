"""The Redis Streams event store: one stream per run, appended by one Lua script."""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Sequence
from typing import Any

from redis.asyncio.cluster import RedisCluster
from redis.commands.core import AsyncScript
from redis.exceptions import AuthenticationError as RedisAuthenticationError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError as RedisResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from . import statushash as sh
from .blobs import BlobStore
from .derived import Expected
from .durability import Durability, call_durably, check_durability
from .errors import (
    AppendArgumentError,
    ConfigurationError,
    IllegalTransitionError,
    InvalidArgumentError,
    LogTruncatedError,
    MalformedMessageError,
    RepairRaceError,
    RunClosedError,
    RunNotFoundError,
    SerializationError,
    ServiceUnavailableError,
    StepMismatchError,
    WorkflowMismatchError,
)
from .events import AppendResult, Event, EventType, NewEvent, decode_entry, put_event_blobs
from .integrity import fingerprint_difference, token_conflict, wire
from .kinds import RUN_TERMINAL_STATES, HookStatus
from .lua import (
    ADD_TIMER_SCRIPT,
    APPEND_SCRIPT,
    CLAIM_HOOK_SCRIPT,
    CLAIM_TIMERS_SCRIPT,
    DEFER_CHECK_SCRIPT,
    ENTITY_SCRIPT,
    FORGET_HOOK_SCRIPT,
    HEARTBEAT_SCRIPT,
    RATE_TAKE_SCRIPT,
    RELEASE_TIMER_SCRIPT,
    REMOVE_RUN_SCRIPT,
    REWRITE_DERIVED_SCRIPT,
)
from .names import (
    INDEX_SHARDS,
    LAYOUT_VERSION,
    MAX_SHARDS,
    LegacyNames,
    Names,
    check_corr,
    check_run_id,
    check_shards,
)
from .outputs import MAX_READ, OutputEntry
from .presence import decode_mark, encode_mark
from .rates import IDLE_TTL_MS, rate_id
from .redis_blobs import RedisBlobStore
from .redis_client import RedisClient, call_scripts, redis_client
from .redis_outputs import RedisOutputs
from .redis_schedules import RedisSchedules
from .redis_slots import RedisSlots
from .removal import implied_timer_members
from .retrying import retried
from .schedules import Advance, Claimed, PutResult, Schedule, ScheduleSpec, Unreadable
from .slots import SlotKind, SlotUse
from .store import START, EventStore, RemovalIndex, RemoveOutcome, RunSummary, summary_of
from .timers import DueTimer, EntityStatus, Timer, quarantined
from .urls import redact, redact_text
from .watch import ClusterStreamWatcher, StreamWatcher, stream_watcher

REMOVE_ATTEMPTS = 5
"""Readings of a run's log and blob set before removal gives up (they only change by a race)."""
CLAIM_ATTEMPTS = 5
"""Compare-and-set rounds for a hook token before giving up (it changes hands only by a race)."""
SHARDS_PER_MASTER = 16
"""A namespace created on a Redis Cluster gets this many shards per master (up to MAX_SHARDS)."""
REMOVE_READ_EVENTS = 20_000
"""Log entries ``remove_runs`` reads in one pipeline at most (one larger log goes alone)."""
_REMOVE_REPLY = {
    "removed": RemoveOutcome.REMOVED,
    "notfound": RemoveOutcome.NOT_FOUND,
    "live": RemoveOutcome.LIVE,
    "moved": RemoveOutcome.MOVED,
}
PING_TIMEOUT = 10.0
"""The start-up check's bound: a TLS client on a plain port waits for a handshake forever."""


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisEventStore(EventStore):
    """Event store on Redis Streams; the stream is the truth, the hash a cache.

    ``client`` is one server's or a cluster's (``eventlog/redis_client.py``); what
    differs on a cluster (pipelined scripts, the stream watcher, keyless commands)
    is decided by the client's class, in the helpers, not here.
    """

    def __init__(
        self,
        client: RedisClient,
        names: Names,
        *,
        owns_client: bool = False,
        blob_store: BlobStore | None = None,
        durability: Durability | None = None,
    ) -> None:
        self.client = client
        self.names = names
        self._own_blobs = blob_store is None
        self.durability = durability or Durability()
        self.blob_store: BlobStore = blob_store or RedisBlobStore(client, names)
        self._owns_client = owns_client
        self._append = client.register_script(APPEND_SCRIPT)
        self._claim_hook = client.register_script(CLAIM_HOOK_SCRIPT)
        self._claim = client.register_script(CLAIM_TIMERS_SCRIPT)
        self._release = client.register_script(RELEASE_TIMER_SCRIPT)
        self._add_timer = client.register_script(ADD_TIMER_SCRIPT)
        self._heartbeat = client.register_script(HEARTBEAT_SCRIPT)
        self._entity = client.register_script(ENTITY_SCRIPT)
        self._forget_hook = client.register_script(FORGET_HOOK_SCRIPT)
        self._rewrite = client.register_script(REWRITE_DERIVED_SCRIPT)
        self._defer_check = client.register_script(DEFER_CHECK_SCRIPT)
        self._remove = client.register_script(REMOVE_RUN_SCRIPT)
        self._watcher: StreamWatcher | ClusterStreamWatcher | None = None
        self._outputs = RedisOutputs(client, names, self._watch_key)
        self._slots = RedisSlots(client, names)
        self._take_rate = client.register_script(RATE_TAKE_SCRIPT)
        self._schedules = RedisSchedules(client, names)
        self._url = ""

    @classmethod
    def from_url(
        cls, url: str, names: Names, *, durability: Durability | None = None
    ) -> RedisEventStore:
        # Killed or dropped connections are retried by redis-py itself (the append
        # is safe to repeat: a repeat is a duplicate); longer outages, and a cluster's
        # failovers, are ridden out by the callers' backoff (eventlog.retrying).
        store = cls(redis_client(url), names, owns_client=True, durability=durability)
        store._url = url
        return store

    async def ping(self) -> None:
        """One bounded round trip: an outage is "unreachable", a refused login is configuration."""
        where = f"Redis at {redact(self._url)}" if self._url else "Redis"
        try:
            if isinstance(self.client, RedisCluster):  # every master, not one of them
                await asyncio.wait_for(
                    self.client.ping(target_nodes=RedisCluster.PRIMARIES), PING_TIMEOUT
                )
            else:
                await asyncio.wait_for(self.client.ping(), PING_TIMEOUT)
            await check_durability(self.client, self.durability, where)
        except ConfigurationError as exc:
            raise ConfigurationError(f"{where}: {exc}") from exc
        except RedisAuthenticationError as exc:
            raise ConfigurationError(
                f"{where} refused the login ({self._detail(exc)}): check the user and "
                "password in the Redis URL"
            ) from exc
        except RedisResponseError as exc:  # NOPERM and kin: the ACL user may not do this
            raise ConfigurationError(f"{where} refused PING: {self._detail(exc)}") from exc
        except (TypeError, ValueError) as exc:  # redis-py checks URL options on first connect
            tls = "rediss+cluster://" if isinstance(self.client, RedisCluster) else "rediss://"
            hint = f"; TLS options (ssl_*) need {tls}" if "ssl" in str(exc) else ""
            raise ConfigurationError(
                f"{where}: the URL's options cannot be used ({self._detail(exc)}){hint}"
            ) from exc
        except (RedisConnectionError, RedisTimeoutError, TimeoutError, OSError) as exc:
            hint = ""
            if self._url.startswith(("rediss:", "rediss+cluster:")) and isinstance(
                exc, (TimeoutError, RedisTimeoutError)
            ):
                hint = " (no TLS handshake answer: does that port serve TLS?)"
            raise ServiceUnavailableError(
                f"{where} is not reachable: {self._detail(exc)}{hint}"
            ) from exc

    def _detail(self, exc: BaseException) -> str:
        text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        return redact_text(text, [self._url] if self._url else [])

    def _run_keys(self, run_id: str) -> list[str]:
        """The keys the append and the rewrite scripts touch, in their KEYS order."""
        return [
            self.names.stream(run_id),
            self.names.status(run_id),
            self.names.active_for(run_id),
            self.names.timer_for(run_id),
            self.names.runs_for(run_id),
            self.names.finished_for(run_id),
            self.names.expire_for(run_id),
        ]

    # --- the namespace's layout ------------------------------------------------------

    async def adopt_layout(self) -> Names:
        """Use the namespace's recorded shard count, recording one if the namespace is new.

        Every process must put a run in the same shard, so the count is written once
        (HSETNX: the first process wins a race) and read by everyone after. Data in
        layout 1 is refused with the way out (``ledgerflow migrate``) rather than
        silently ignored.
        """
        meta_key = self.names.meta()
        meta = await self._meta()
        if not meta:
            if await self.legacy_keys():
                raise ConfigurationError(
                    f"namespace {self.names.namespace!r} holds runs in the key layout of "
                    "ledgerflow before Redis Cluster support (layout 1): stop its workers, "
                    "schedulers and reconciler, then run `ledgerflow migrate`"
                )
            shards = await self._default_shards()
            async with self.client.pipeline(transaction=False) as pipe:
                pipe.hsetnx(meta_key, "shards", shards)
                pipe.hsetnx(meta_key, "layout", LAYOUT_VERSION)
                await pipe.execute()
            meta = await self._meta()
        layout, shards_text = meta.get("layout", ""), meta.get("shards", "")
        if layout != str(LAYOUT_VERSION) or not shards_text.isdigit():
            raise ConfigurationError(
                f"namespace {self.names.namespace!r} records key layout {layout!r} with "
                f"{shards_text!r} shards ({meta_key}); this ledgerflow uses layout "
                f"{LAYOUT_VERSION}: upgrade ledgerflow, or check that key"
            )
        self.use_names(Names(self.names.namespace, check_shards(int(shards_text))))
        return self.names

    def use_names(self, names: Names) -> None:
        """Address keys with ``names`` (another shard count): the layout and migrate only."""
        if names == self.names:
            return
        self.names = names
        if self._own_blobs:
            self.blob_store = RedisBlobStore(self.client, names)
        self._outputs = RedisOutputs(self.client, names, self._watch_key)
        self._slots = RedisSlots(self.client, names)
        self._schedules = RedisSchedules(self.client, names)

    async def _meta(self) -> dict[str, str]:
        raw = await self.client.hgetall(self.names.meta())
        return {_text(k): _text(v) for k, v in raw.items()}

    async def _default_shards(self) -> int:
        """16 on one Redis; on a cluster 16 per master, so shards divide evenly among them."""
        primaries = getattr(self.client, "get_primaries", None)
        if primaries is None:
            return INDEX_SHARDS
        return min(MAX_SHARDS, SHARDS_PER_MASTER * max(1, len(primaries())))

    async def legacy_keys(self) -> list[str]:
        """Which index keys of layout 1 exist in this namespace (none once migrated)."""
        keys = LegacyNames(self.names.namespace).indexes()
        async with self.client.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.exists(key)
            found: list[Any] = await pipe.execute()
        return [key for key, n in zip(keys, found, strict=True) if n]

    async def mark_migrated(self, shards: int) -> None:
        """Record layout 2 for a namespace whose layout-1 data has been moved."""
        await self.client.hset(
            self.names.meta(), mapping={"layout": LAYOUT_VERSION, "shards": check_shards(shards)}
        )
        self.use_names(Names(self.names.namespace, shards))

    # --- the hook-token registry -----------------------------------------------------
    #
    # The registry maps a token to the "run|corr" of its hook. A lookup knows only the
    # token, so the registry is sharded by token and cannot share the run's slot: it is
    # kept beside the append instead of inside it. A token is claimed (compare-and-set)
    # before the hook_created append and released after hook_disposed; a holder is
    # trusted only while the run's own status hash shows its hook live with that
    # token, so an entry left behind by a crash between the two calls is never
    # followed and is taken over by the next claim. (A hook not disposed when its run
    # ended, a race with cancellation, keeps its token, as the memory store does, until
    # a resume finds the run closed or the run is removed.) A claim whose append has not yet
    # landed (the holder's run is live, its hook not recorded) counts as live: the
    # appender retries the same append (claiming again is a no-op) and the reconciler
    # re-drives a run whose appender died, so no second run can take the token meanwhile.

    async def _claim_token(self, token: str, owner: str) -> bool:
        """Take ``token`` for ``owner``; True if newly taken, False if it already was ours."""
        expected = ""
        for _ in range(CLAIM_ATTEMPTS):
            reply: Any = await self._claim_hook(
                keys=[self.names.hook_tokens_for(token)], args=[token, owner, expected]
            )
            verdict = _text(reply[0])
            if verdict == "mine":
                return False
            if verdict == "taken":
                return True
            holder = _text(reply[1])
            if await self._holding(holder, token):
                raise token_conflict(token, holder, owner.partition("|")[2])
            expected = holder
        raise RepairRaceError(f"hook token {token!r} kept changing hands while being claimed")

    async def _holding(self, holder: str, token: str) -> str:
        """How ``holder`` ("run|corr") holds ``token``: "live", "pending" or "" (it does not).

        Pending: claimed, its hook_created not yet recorded, and its run goes on.
        """
        run_id, _, corr = holder.partition("|")
        try:
            check_run_id(run_id)
            check_corr(corr)
        except InvalidArgumentError:
            return ""  # not an entry of ours: a claim replaces it
        state, entity, held = await self.client.hmget(
            self.names.status(run_id), sh.RUN, sh.entity_field(corr), sh.token_field(corr)
        )
        if not state:
            return ""  # the run is gone
        if entity is None:
            return "" if _text(state) in RUN_TERMINAL_STATES else "pending"
        kind, hook_state = sh.split_entity(_text(entity))
        if kind == "hook" and hook_state != HookStatus.DISPOSED and held is not None:
            return "live" if _text(held) == token else ""
        return ""

    async def _release_tokens(self, pairs: Sequence[tuple[str, str]]) -> None:
        for token, owner in pairs:
            await self._forget_hook(keys=[self.names.hook_tokens_for(token)], args=[token, owner])

    async def _release_disposed(self, run_id: str, corrs: Sequence[str]) -> None:
        """Release the tokens of hooks just disposed (their status hash keeps the token)."""
        if not corrs:
            return
        tokens = await self.client.hmget(
            self.names.status(run_id), [sh.token_field(c) for c in corrs]
        )
        await self._release_tokens(
            [(_text(t), f"{run_id}|{c}") for t, c in zip(tokens, corrs, strict=True) if t]
        )

    async def _watch(self, run_id: str, after: str, timeout: float) -> list[tuple[str, Any]]:
        return await self._watch_key(self.names.stream(run_id), after, timeout)

    async def _watch_key(self, key: str, after: str, timeout: float) -> list[tuple[str, Any]]:
        """Raw entries after ``after`` through the one shared watcher (started on first use)."""
        if self._watcher is None:
            self._watcher = stream_watcher(self.client)
        return await self._watcher.wait(key, after, timeout)

    # --- output streams (eventlog/outputs.py) -----------------------------------------

    async def write_output(
        self,
        run_id: str,
        name: str,
        *,
        step: str,
        attempt: int,
        restarted: bool,
        data: bytes | None,
        sequence: int,
    ) -> int:
        return await self._outputs.write(
            run_id,
            name,
            step=step,
            attempt=attempt,
            restarted=restarted,
            data=data,
            sequence=sequence,
        )

    async def read_output(
        self, run_id: str, name: str, start: int, count: int = MAX_READ
    ) -> list[OutputEntry]:
        return await self._outputs.read(run_id, name, start, count)

    async def wait_output(
        self, run_id: str, name: str, start: int, timeout: float
    ) -> list[OutputEntry]:
        return await self._outputs.wait(run_id, name, start, timeout)

    async def output_names(self, run_id: str) -> list[str]:
        return await self._outputs.names_of(run_id)

    # --- concurrency slots (eventlog/slots.py) ----------------------------------------

    async def acquire_slot(
        self,
        limit: str,
        key: str,
        member: str,
        capacity: int,
        lease_ms: int,
        message: bytes,
        kind: SlotKind = SlotKind.STEP,
    ) -> tuple[bool, list[bytes]]:
        return await self._slots.acquire(limit, key, member, capacity, lease_ms, message, kind)

    async def release_slot(
        self, limit: str, key: str, member: str, capacity: int, lease_ms: int
    ) -> list[bytes]:
        return await self._slots.release(limit, key, member, capacity, lease_ms)

    async def renew_slots(self, held: Sequence[tuple[str, str, str]], lease_ms: int) -> None:
        await self._slots.renew(held, lease_ms)

    @retried("take a rate limit's turn")
    async def take_rate(
        self, limit: str, key: str, member: str, interval_ms: float, burst: int
    ) -> int:
        reply = await self._take_rate(
            keys=[self.names.rate_bucket(rate_id(limit, key))],
            args=[member, repr(float(interval_ms)), burst, IDLE_TTL_MS],
        )
        return int(reply)

    async def run_slot_holders(self) -> list[tuple[str, str, str, int]]:
        return await self._slots.run_holders()

    async def slot_uses(self) -> list[SlotUse]:
        return await self._slots.uses()

    async def promote_waiting(self, lease_ms: int) -> list[bytes]:
        return await self._slots.promote(lease_ms)

    # --- schedules (eventlog/schedules.py) ---------------------------------------------

    async def put_schedule(
        self, spec: ScheduleSpec, *, next_ms: int, replace: bool = False
    ) -> PutResult:
        return await self._schedules.put(spec, next_ms=next_ms, replace=replace)

    async def read_schedules(
        self, names: Sequence[str] | None = None
    ) -> list[Schedule | Unreadable]:
        return await self._schedules.read(names)

    async def delete_schedule(self, name: str) -> bool:
        return await self._schedules.delete(name)

    async def pause_schedule(self, name: str, *, paused: bool, next_ms: int) -> bool:
        return await self._schedules.pause(name, paused=paused, next_ms=next_ms)

    async def claim_schedules(self, limit: int, lease_ms: int) -> Claimed:
        return await self._schedules.claim(limit, lease_ms)

    async def advance_schedule(self, name: str, expected_next: int, advance: Advance) -> bool:
        return await self._schedules.advance(name, expected_next, advance)

    async def drop_schedule_claim(self, name: str) -> None:
        await self._schedules.drop_claim(name)

    async def schedule_lag(self) -> int:
        return await self._schedules.lag()

    @retried("append events")
    async def append(
        self, run_id: str, events: Sequence[NewEvent], *, based_on: str | None = None
    ) -> list[AppendResult]:
        if not events:
            return []
        await put_event_blobs(self.blob_store, run_id, events)
        argv: list[Any] = [run_id, len(events)]
        claims: dict[str, str] = {}
        for event in events:
            w = wire(event)
            argv += [w.type, w.corr, w.attempt, event.payload, w.key, w.member, w.due, w.retention]
            if event.type is EventType.HOOK_CREATED and event.token:
                claims.setdefault(event.token, f"{run_id}|{event.corr}")
        if based_on is not None:
            argv.append(based_on)
        taken = [(t, o) for t, o in claims.items() if await self._claim_token(t, o)]
        reply = await self._durably(self._append, self._run_keys(run_id), argv)
        status = _text(reply[0])
        if status == "ok":
            results = [
                AppendResult(event_id=_text(r) or None, duplicate=not _text(r)) for r in reply[1:]
            ]
            disposed = [
                e.corr
                for e, r in zip(events, results, strict=True)
                if e.type is EventType.HOOK_DISPOSED and not r.duplicate
            ]
            await self._release_disposed(run_id, disposed)
            return results
        # The script wrote nothing: what this call claimed is not needed. (An exception,
        # which may hide a written batch, keeps its claims: a retry claims them again.)
        await self._release_tokens(taken)
        code, entity, current, event_type, detail = (_text(r) for r in reply[1:6])
        if code == "notfound":
            raise RunNotFoundError(run_id)
        if code == "truncated":
            raise LogTruncatedError(run_id, detail)
        if code == "closed":
            raise RunClosedError(run_id, entity, current, event_type)
        if code == "badarg":
            raise AppendArgumentError(run_id, entity, current, event_type, detail)
        if code == "forged":
            corr = entity.partition(" ")[2]
            raise StepMismatchError(run_id, corr, fingerprint_difference(current, detail))
        if code == "tokenclash":
            raise token_conflict(detail, current, entity.partition(" ")[2])
        if code == "mismatch":
            raise WorkflowMismatchError(
                f"run {run_id!r} already exists for workflow {current!r}, not {detail!r}"
            )
        raise IllegalTransitionError(run_id, entity, current, event_type)

    async def _durably(self, script: AsyncScript, keys: list[str], args: list[Any]) -> Any:
        """``script``'s reply once its writes have the copies ``durability`` asks for."""
        if not self.durability.waits:
            return await script(keys=keys, args=args)
        barrier = self.names.barrier(keys[0])
        return await call_durably(self.client, self.durability, script, keys, args, barrier)

    @retried("read a log")
    async def read(self, run_id: str, after: str = START, count: int | None = None) -> list[Event]:
        entries: Any = await self.client.xrange(
            self.names.stream(run_id), min=f"({after}" if after != START else "-", count=count
        )
        return [decode_entry(_text(entry_id), fields) for entry_id, fields in entries]

    async def wait(self, run_id: str, after: str, timeout: float) -> list[Event]:
        entries = await self._watch(run_id, after, timeout)
        return [decode_entry(entry_id, fields) for entry_id, fields in entries]

    async def wait_for(
        self, run_id: str, after: str, timeout: float, types: frozenset[EventType]
    ) -> tuple[str, list[Event]]:
        entries = await self._watch(run_id, after, timeout)
        if not entries:
            return after, []
        wanted = {t.value.encode() for t in types} | {t.value for t in types}
        found = [
            decode_entry(entry_id, fields)
            for entry_id, fields in entries
            if fields.get(b"type", fields.get("type")) in wanted
        ]
        return entries[-1][0], found

    @retried("read a status hash")
    async def status(self, run_id: str) -> dict[str, str]:
        raw = await self.client.hgetall(self.names.status(run_id))
        return {_text(k): _text(v) for k, v in raw.items()}

    @retried("read a run's state")
    async def run_tail(self, run_id: str) -> tuple[str, str]:
        state, last = await self.client.hmget(self.names.status(run_id), sh.RUN, sh.LAST)
        return (_text(state) if state else "", _text(last) if last else "")

    @retried("read a run's event count")
    async def event_count(self, run_id: str) -> int:
        count = await self.client.hget(self.names.status(run_id), sh.COUNT)
        return int(count) if count else 0

    @retried("read the active-runs index")
    async def active_runs(self, shard: int, limit: int = 1000) -> list[tuple[str, int]]:
        raw: Any = await self.client.zrange(
            self.names.active_shard(shard), 0, limit - 1, withscores=True
        )
        return [(_text(member), int(score)) for member, score in raw]

    async def count_active_runs(self) -> int:
        """Not retried: the metrics sampler bounds it with a timeout and tries again later."""
        return await self._cardinality(self.names.active_shards())

    async def count_timers(self) -> int:
        return await self._cardinality(self.names.timer_shards())

    async def _cardinality(self, keys: list[str]) -> int:
        async with self.client.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.zcard(key)
            replies: list[Any] = await pipe.execute()
        return sum(int(n) for n in replies)

    async def claim_timers(self, limit: int, lease_ms: int) -> list[DueTimer]:
        shards = self.names.timer_shards()
        calls = [([shard], [limit, lease_ms]) for shard in shards]
        replies = await call_scripts(self.client, self._claim, calls)
        claimed: list[DueTimer] = []
        for shard, reply in zip(shards, replies, strict=True):
            now = int(_text(reply[0]))
            for i in range(1, len(reply), 2):
                timer = await self._parse_claimed(shard, reply[i])
                if timer is not None:
                    claimed.append(
                        DueTimer(timer=timer, due=int(float(reply[i + 1])), lease=now + lease_ms)
                    )
        claimed.sort(key=lambda d: d.due)
        return claimed[:limit]

    async def _parse_claimed(self, shard: str, raw: Any) -> Timer | None:
        """A claimed member as a Timer; a malformed one is removed (exactly those bytes) and logged.

        Parsed one by one, so a foreign entry never fails the claim of the others.
        """
        try:
            return Timer.parse(raw.decode() if isinstance(raw, bytes) else str(raw))
        except (MalformedMessageError, UnicodeDecodeError) as exc:
            await self.client.zrem(shard, raw)
            quarantined(raw, exc)
            return None

    @retried("release a timer")
    async def release_timer(self, due: DueTimer) -> None:
        await self._release(
            keys=[self.names.timer_for(due.timer.run_id)], args=[due.timer.member, due.lease]
        )

    @retried("arm a timer")
    async def add_timer(
        self, timer: Timer, *, delay_ms: int | None = None, due_ms: int | None = None
    ) -> int:
        spec = str(int(due_ms)) if due_ms is not None else f"+{int(delay_ms or 0)}"
        at = await self._add_timer(
            keys=[self.names.timer_for(timer.run_id)], args=[timer.member, spec]
        )
        return int(_text(at))

    async def pending_timers(self, run_id: str) -> list[tuple[Timer, int]]:
        found: list[tuple[Timer, int]] = []
        async for member, score in self.client.zscan_iter(
            self.names.timer_for(run_id), match=f"*|{check_run_id(run_id)}|*", count=1000
        ):
            try:
                timer = Timer.parse(member.decode() if isinstance(member, bytes) else str(member))
            except (MalformedMessageError, UnicodeDecodeError):
                continue  # not this run's: the timer loop's claim removes it
            if timer.run_id == run_id:
                found.append((timer, int(score)))
        return found

    @retried("read an entity's status")
    async def entity(self, run_id: str, corr: str) -> EntityStatus:
        raw: Any = await self._entity(keys=[self.names.status(run_id)], args=[corr])
        run_state, entity, attempt, created, beat, now, workflow = (_text(v) for v in raw)
        kind, state = sh.split_entity(entity)
        return EntityStatus(
            run_state=run_state,
            kind=kind,
            state=state,
            attempt=int(attempt or 0),
            created_id=created or None,
            heartbeat=int(beat) if beat else None,
            now=int(now),
            workflow=workflow,
        )

    @retried("read an event")
    async def read_event(self, run_id: str, event_id: str) -> Event | None:
        entries: Any = await self.client.xrange(
            self.names.stream(run_id), min=event_id, max=event_id, count=1
        )
        if not entries:
            return None
        entry_id, fields = entries[0]
        return decode_entry(_text(entry_id), fields)

    @retried("read status hashes")
    async def statuses(self, run_ids: Sequence[str]) -> list[dict[str, str]]:
        if not run_ids:
            return []
        async with self.client.pipeline(transaction=False) as pipe:
            for run_id in run_ids:
                pipe.hgetall(self.names.status(run_id))
            replies: list[Any] = await pipe.execute()
        return [{_text(k): _text(v) for k, v in raw.items()} for raw in replies]

    @retried("read events")
    async def read_events(self, refs: Sequence[tuple[str, str]]) -> list[Event | None]:
        if not refs:
            return []
        async with self.client.pipeline(transaction=False) as pipe:
            for run_id, event_id in refs:
                pipe.xrange(self.names.stream(run_id), min=event_id, max=event_id, count=1)
            replies: list[Any] = await pipe.execute()
        return [
            decode_entry(_text(entries[0][0]), entries[0][1]) if entries else None
            for entries in replies
        ]

    async def heartbeat(self, run_id: str, corr: str, attempt: int) -> bool:
        stamped = await self._heartbeat(keys=[self.names.status(run_id)], args=[corr, attempt])
        return bool(stamped)

    @retried("look up a hook")
    async def hook_owner(self, token: str) -> tuple[str, str] | None:
        raw = await self.client.hget(self.names.hook_tokens_for(token), token)
        if raw is None:
            return None
        owner = _text(raw)
        run_id, _, corr = owner.partition("|")
        holding = await self._holding(owner, token)
        if holding == "live":
            return run_id, corr
        if not holding:  # left by a crash between a disposal and its release: drop it
            await self._release_tokens([(token, owner)])
        return None

    async def forget_hook(self, token: str, run_id: str, corr: str) -> None:
        await self._release_tokens([(token, f"{run_id}|{corr}")])

    @retried("read run states")
    async def run_states(self, run_ids: Sequence[str]) -> dict[str, str]:
        if not run_ids:
            return {}
        async with self.client.pipeline(transaction=False) as pipe:
            for run_id in run_ids:
                pipe.hget(self.names.status(run_id), sh.RUN)
            replies: list[Any] = await pipe.execute()
        return {r: _text(v) if v is not None else "" for r, v in zip(run_ids, replies, strict=True)}

    @retried("list runs")
    async def list_runs(
        self,
        *,
        status: str | None = None,
        workflow: str | None = None,
        since_ms: int | None = None,
        limit: int = 50,
    ) -> list[RunSummary]:
        """Merge the index shards newest first, a page per shard at a time, filtering as it goes.

        A filter that matches few runs reads more pages, never the whole index at once.
        """
        low: float | str = "-inf" if since_ms is None else since_ms
        page = max(limit, 100)
        offsets = dict.fromkeys(self.names.runs_shards(), 0)
        heads: dict[str, list[tuple[str, float]]] = {}
        found: list[RunSummary] = []
        while len(found) < limit:
            empty = [k for k in offsets if not heads.get(k)]
            if empty:
                pipe = self.client.pipeline(transaction=False)
                for key in empty:
                    pipe.zrevrangebyscore(
                        key, "+inf", low, start=offsets[key], num=page, withscores=True
                    )
                for key, rows in zip(empty, await pipe.execute(), strict=True):
                    if rows:
                        heads[key] = [(_text(m), float(sc)) for m, sc in rows]
                        offsets[key] += len(rows)
                    else:
                        del offsets[key]
                        heads.pop(key, None)
            if not heads:
                break
            # The newest page-full across shards: every shard head is at least this new.
            floor = max(rows[-1][1] for rows in heads.values())
            batch: list[tuple[str, float]] = []
            for key in list(heads):
                rows = heads[key]
                take = [r for r in rows if r[1] >= floor]
                heads[key] = rows[len(take) :]
                batch += take
            batch.sort(key=lambda r: r[1], reverse=True)
            pipe = self.client.pipeline(transaction=False)
            for run_id, _ in batch:
                pipe.hmget(self.names.status(run_id), *sh.SUMMARY)
            for (run_id, _), fields in zip(batch, await pipe.execute(), strict=True):
                row = {
                    k: _text(v) for k, v in zip(sh.SUMMARY, fields, strict=True) if v is not None
                }
                summary = summary_of(run_id, row)
                if summary is not None and summary.matches(status, workflow):
                    found.append(summary)
        return found[:limit]

    async def is_listed(self, run_id: str) -> bool:
        return await self.client.zscore(self.names.runs_for(run_id), run_id) is not None

    @retried("read stale runs")
    async def stale_runs(self, shard: int, older_than_ms: int, limit: int) -> list[tuple[str, int]]:
        raw: Any = await self.client.zrangebyscore(
            self.names.active_shard(shard),
            "-inf",
            older_than_ms,
            start=0,
            num=limit,
            withscores=True,
        )
        return [(_text(member), int(score)) for member, score in raw]

    @retried("defer a run's check")
    async def defer_check(self, run_id: str, seen: int, until_ms: int) -> bool:
        moved = await self._defer_check(
            keys=[self.names.active_for(run_id)], args=[run_id, seen, until_ms]
        )
        return bool(moved)

    @retried("read run tails")
    async def run_tails(self, run_ids: Sequence[str]) -> list[tuple[str, str]]:
        if not run_ids:
            return []
        async with self.client.pipeline(transaction=False) as pipe:
            for run_id in run_ids:
                pipe.hmget(self.names.status(run_id), sh.RUN, sh.LAST)
            replies: list[Any] = await pipe.execute()
        return [(_text(s) if s else "", _text(last) if last else "") for s, last in replies]

    @retried("mark a worker alive")
    async def mark_alive(
        self, identity: str, ttl_ms: int, running: Collection[str] | None = None
    ) -> None:
        mark = encode_mark(running)
        await self.client.set(self.names.worker_presence(identity), mark, px=ttl_ms)

    @retried("mark a worker gone")
    async def mark_gone(self, identity: str) -> None:
        await self.client.delete(self.names.worker_presence(identity))

    @retried("read worker presence")
    async def presence(self, identities: Sequence[str]) -> dict[str, frozenset[str] | None]:
        wanted = list(dict.fromkeys(identities))
        if not wanted:
            return {}
        # One GET each: on a cluster the presence keys live on different nodes.
        async with self.client.pipeline(transaction=False) as pipe:
            for identity in wanted:
                pipe.get(self.names.worker_presence(identity))
            found: list[Any] = await pipe.execute()
        return {i: decode_mark(v) for i, v in zip(wanted, found, strict=True) if v is not None}

    @retried("read the clock")
    async def now_ms(self) -> int:
        seconds, micros = await self.client.time()
        return int(seconds) * 1000 + int(micros) // 1000

    async def is_active(self, run_id: str) -> bool:
        score = await self.client.zscore(self.names.active_for(run_id), run_id)
        return score is not None

    async def rewrite_derived(self, run_id: str, expected: Expected, last_id: str) -> bool:
        argv: list[Any] = [run_id, last_id, "1" if expected.active else "0", len(expected.status)]
        for key, value in expected.status.items():
            argv += [key, value]
        argv.append(len(expected.timers))
        for timer, due in expected.timers:
            argv += [timer.member, due]
        index, score = expected.retention or ("", 0)
        argv += [str(index), score]
        if not await self._rewrite(keys=self._run_keys(run_id), args=argv):
            return False
        # The live hooks' tokens, now that the status hash shows them (see the registry).
        for token, owner in expected.hooks.items():
            await self._claim_token(token, owner)
        return True

    async def remove_run(self, run_id: str, *, expected_last: str | None = None) -> RemoveOutcome:
        """Read what the script cannot find by itself (timer members, blob keys), then remove.

        The script refuses ("stale") if the log or the blob set changed since they
        were read, so nothing the run still holds is left behind; then read again.
        With no run the script still runs: it drops a leftover retention entry.
        """
        check_run_id(run_id)
        for _ in range(REMOVE_ATTEMPTS):
            state, _last = await self.run_tail(run_id)
            if state and state not in RUN_TERMINAL_STATES:
                return RemoveOutcome.LIVE
            events = await self.read(run_id) if state else []
            digests: Any = await self.client.smembers(self.names.blob_set(run_id)) if state else []
            outputs: Any = await self.client.hkeys(self.names.output_set(run_id)) if state else []
            keys, args = self._removal(run_id, events, digests, outputs, expected_last)
            done = await self._removed(await self._remove(keys=keys, args=args))
            if done is not None:
                return done
        raise RepairRaceError(f"run {run_id!r} kept changing while it was being removed")

    async def _removed(self, reply: Any) -> RemoveOutcome | None:
        """The removal script's verdict (None: stale, read again); releases the run's tokens.

        The hook-token registry is in other slots than the run, so the script names
        the tokens the run recorded and they are released here, after it.
        """
        verdict = _text(reply[0])
        if verdict == "removed":
            pairs = [(_text(reply[i]), _text(reply[i + 1])) for i in range(1, len(reply), 2)]
            await self._release_tokens(pairs)
        return _REMOVE_REPLY.get(verdict)

    async def remove_runs(self, run_ids: Sequence[str]) -> list[RemoveOutcome]:
        """``remove_run`` of each run, in a few round trips for the lot (the janitor's way).

        One pipeline reads every run's state, event count and blob set; logs are
        read in pipelines of about ``REMOVE_READ_EVENTS`` events; one pipeline
        sends every removal script. Removing a run one call at a time costs six
        round trips, and at a few hundred runs a second the janitor then falls
        behind the workers. A run that changed in between (the script says
        "stale") or whose log cannot be decoded goes through ``remove_run``.
        """
        for run_id in run_ids:
            check_run_id(run_id)
        if not run_ids:
            return []
        heads = await self._removal_heads(run_ids)
        outcomes: dict[int, RemoveOutcome] = {}
        wanted: list[int] = []
        for i, (state, _count, _digests, _outputs) in enumerate(heads):
            if state and state not in RUN_TERMINAL_STATES:
                outcomes[i] = RemoveOutcome.LIVE
            else:
                wanted.append(i)
        logs = await self._removal_logs([(run_ids[i], heads[i][1]) for i in wanted])
        calls: list[tuple[int, list[str], list[Any]]] = []
        for i, entries in zip(wanted, logs, strict=True):
            try:
                events = [decode_entry(_text(entry_id), fields) for entry_id, fields in entries]
            except SerializationError:
                outcomes[i] = await self.remove_run(run_ids[i])
                continue
            _, _, digests, outputs = heads[i]
            calls.append((i, *self._removal(run_ids[i], events, digests, outputs, None)))
        if calls:
            replies = await call_scripts(
                self.client, self._remove, [(keys, args) for _, keys, args in calls]
            )
            for (i, _, _), reply in zip(calls, replies, strict=True):
                done = await self._removed(reply)
                outcomes[i] = done if done is not None else await self.remove_run(run_ids[i])
        return [outcomes[i] for i in range(len(run_ids))]

    @retried("read runs to remove")
    async def _removal_heads(
        self, run_ids: Sequence[str]
    ) -> list[tuple[str, int, list[Any], list[Any]]]:
        """Each run's state, event count, blob digests and output streams (state "": no run)."""
        async with self.client.pipeline(transaction=False) as pipe:
            for run_id in run_ids:
                pipe.hmget(self.names.status(run_id), sh.RUN, sh.COUNT)
                pipe.smembers(self.names.blob_set(run_id))
                pipe.hkeys(self.names.output_set(run_id))
            replies: list[Any] = await pipe.execute()
        heads = []
        for (state, count), digests, outputs in zip(
            replies[::3], replies[1::3], replies[2::3], strict=True
        ):
            heads.append(
                (_text(state) if state else "", int(count or 0), list(digests), list(outputs))
            )
        return heads

    @retried("read the logs of runs to remove")
    async def _removal_logs(self, runs: Sequence[tuple[str, int]]) -> list[Any]:
        """Each run's raw log entries, read in pipelines of about ``REMOVE_READ_EVENTS``."""
        logs: list[Any] = []
        start = 0
        while start < len(runs):
            end, events = start, 0
            while end < len(runs) and (end == start or events + runs[end][1] <= REMOVE_READ_EVENTS):
                events += runs[end][1]
                end += 1
            async with self.client.pipeline(transaction=False) as pipe:
                for run_id, _count in runs[start:end]:
                    pipe.xrange(self.names.stream(run_id))
                logs += await pipe.execute()
            start = end
        return logs

    def _removal(
        self,
        run_id: str,
        events: Sequence[Event],
        digests: Any,
        outputs: Any,
        expected_last: str | None,
    ) -> tuple[list[str], list[Any]]:
        """The removal script's keys and arguments, from what was read of the run.

        An output set's field that is no valid stream name (written by hand) still
        names a key to delete: removal must leave nothing of the run behind.
        """
        members = implied_timer_members(run_id, events)
        blobs = [self.names.blob(run_id, _text(d)) for d in sorted(digests)]
        keys = [
            self.names.stream(run_id),
            self.names.status(run_id),
            self.names.runs_for(run_id),
            self.names.active_for(run_id),
            self.names.finished_for(run_id),
            self.names.expire_for(run_id),
            self.names.timer_for(run_id),
            self.names.blob_set(run_id),
            self.names.output_set(run_id),
            *blobs,
            *(self.names.output(run_id, _text(n)) for n in sorted(outputs)),
        ]
        seen = events[-1].id if events else ""
        return keys, [run_id, expected_last or "", seen, len(blobs), len(members), *members]

    async def runs_bytes(self, run_ids: Sequence[str]) -> list[int]:
        """``run_bytes`` of each run, in one round trip."""
        if not run_ids:
            return []
        async with self.client.pipeline(transaction=False) as pipe:
            for run_id in run_ids:
                pipe.memory_usage(self.names.stream(run_id))
                pipe.memory_usage(self.names.status(run_id))
            sizes: list[Any] = await pipe.execute()
        return [int(a or 0) + int(b or 0) for a, b in zip(sizes[::2], sizes[1::2], strict=True)]

    @retried("measure a run")
    async def run_bytes(self, run_id: str) -> int:
        """Redis's estimate (MEMORY USAGE, sampled) of the run's stream and status hash."""
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.memory_usage(self.names.stream(run_id))
            pipe.memory_usage(self.names.status(run_id))
            sizes: list[Any] = await pipe.execute()
        return sum(int(size or 0) for size in sizes)

    @retried("read a retention index")
    async def due_removals(
        self, index: RemovalIndex, shard: int, until_ms: int, limit: int
    ) -> list[str]:
        key = self._removal_key(index, shard)
        raw: Any = await self.client.zrangebyscore(key, "-inf", until_ms, start=0, num=limit)
        return [_text(member) for member in raw]

    def _removal_key(self, index: RemovalIndex, shard: int) -> str:
        if index is RemovalIndex.EXPIRE:
            return self.names.expire_shard(shard)
        return self.names.finished_shard(shard)

    async def count_due_removals(self, now_ms: int, default_ms: int | None) -> int:
        """Not retried: the metrics sampler bounds it with a timeout and tries again later."""
        async with self.client.pipeline(transaction=False) as pipe:
            for key in self.names.expire_shards():
                pipe.zcount(key, "-inf", now_ms)
            if default_ms is not None:
                for key in self.names.finished_shards():
                    pipe.zcount(key, "-inf", now_ms - default_ms)
            replies: list[Any] = await pipe.execute()
        return sum(int(n) for n in replies)

    @retried("read a run's retention entry")
    async def removal_entry(self, run_id: str) -> tuple[RemovalIndex, int] | None:
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.zscore(self.names.finished_for(run_id), run_id)
            pipe.zscore(self.names.expire_for(run_id), run_id)
            finished, expire = await pipe.execute()
        if expire is not None:
            return RemovalIndex.EXPIRE, int(expire)
        if finished is not None:
            return RemovalIndex.FINISHED, int(finished)
        return None

    async def close(self) -> None:
        if self._watcher is not None:
            await self._watcher.close()
            self._watcher = None
        if self._owns_client:
            await self.client.aclose()
