"""An in-memory event store with the Redis store's exact semantics.

For the embedded mode (a newcomer with no servers) and fast unit tests; never a
stand-in for the integration suite. It walks the same transition table as the
Lua script, and the conformance suite runs against both.
"""

from __future__ import annotations

import asyncio
import bisect
import time
from collections import defaultdict
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

from . import statushash as sh
from .batch import decide_batch
from .blobs import BlobStore
from .derived import Expected
from .errors import MalformedMessageError
from .events import (
    SCHEMA_VERSION,
    AppendResult,
    Event,
    EventType,
    NewEvent,
    decode_entry,
    id_order,
    put_event_blobs,
)
from .kinds import RUN_TERMINAL_STATES, StepStatus
from .memory_blobs import MemoryBlobStore
from .memory_outputs import MemoryOutputs
from .memory_rates import MemoryRates
from .memory_schedules import MemorySchedules
from .memory_slots import MemorySlots
from .names import Names, shard_of
from .outputs import MAX_READ, OutputEntry
from .presence import decode_mark, encode_mark
from .removal import implied_timer_members
from .schedules import Advance, Claimed, PutResult, Schedule, ScheduleSpec, Unreadable
from .slots import SlotKind, SlotUse
from .store import START, EventStore, RemovalIndex, RemoveOutcome, RunSummary, summary_of
from .timers import DueTimer, EntityStatus, Timer, quarantined
from .transitions import ABSENT


def _now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True, slots=True)
class _Entry:
    """A stream entry as Redis keeps it: raw fields, decoded only when read.

    Decoding on read, not on append, is what Redis does: a payload this process
    cannot decode is written, and fails (or shows as undecodable) where it is read.
    """

    id: str
    fields: dict[str, Any]

    @property
    def type(self) -> str:
        return str(self.fields["type"])

    def event(self) -> Event:
        return decode_entry(self.id, self.fields)


class MemoryEventStore(EventStore):
    def __init__(self, names: Names | None = None, *, blob_store: BlobStore | None = None) -> None:
        self.names = names or Names()
        self.memory_blobs = MemoryBlobStore(self._blob_run_state)
        self._outputs = MemoryOutputs(self._blob_run_state)
        self._slots = MemorySlots()
        self._rates = MemoryRates()
        self.memory_schedules = MemorySchedules(_now_ms)
        self.blob_store: BlobStore = blob_store or self.memory_blobs
        self._streams: dict[str, list[_Entry]] = defaultdict(list)
        self._status: dict[str, dict[str, str]] = defaultdict(dict)
        self._active: dict[int, dict[str, int]] = defaultdict(dict)
        self._timers: dict[int, dict[str, int]] = defaultdict(dict)
        self._hooks: dict[str, str] = {}
        # Retention indexes, as the Redis store shards them: shard -> run -> score (ms).
        self._retention: dict[RemovalIndex, dict[int, dict[str, int]]] = {
            index: defaultdict(dict) for index in RemovalIndex
        }
        # worker identity -> (expiry ms, the runs its mark lists or None)
        self._presence: dict[str, tuple[int, frozenset[str] | None]] = {}
        self._changed: dict[str, asyncio.Condition] = {}
        self._last_id = (0, 0)

    def _blob_run_state(self, run_id: str) -> str | None:
        run = self._status.get(run_id, {}).get(sh.RUN)
        if run is None:
            return None
        return "ended" if run in RUN_TERMINAL_STATES else "live"

    def _next_id(self, now: int) -> str:
        ms, seq = self._last_id
        self._last_id = (now, 0) if now > ms else (ms, seq + 1)
        return f"{self._last_id[0]}-{self._last_id[1]}"

    def _holds(self, run_id: str, entry_id: str) -> bool:
        stream = self._streams.get(run_id, [])
        key = id_order(entry_id)
        i = bisect.bisect_left(stream, key, key=lambda entry: id_order(entry.id))
        return i < len(stream) and stream[i].id == entry_id

    def _condition(self, run_id: str) -> asyncio.Condition:
        cond = self._changed.get(run_id)
        if cond is None:
            cond = self._changed[run_id] = asyncio.Condition()
        return cond

    async def append(
        self, run_id: str, events: Sequence[NewEvent], *, based_on: str | None = None
    ) -> list[AppendResult]:
        if not events:
            return []
        await put_event_blobs(self.blob_store, run_id, events)
        status = self._status[run_id]
        plan = decide_batch(
            run_id,
            events,
            run_state=status.get(sh.RUN, ABSENT),
            stored_workflow=status.get(sh.WORKFLOW, ""),
            entity_state=lambda corr: sh.entity_of(status, corr),
            logged_fingerprint=lambda corr: status.get(sh.fingerprint_field(corr), ""),
            token_owner=self._hooks.get,
            based_on=based_on,
            log_holds=lambda entry_id: self._holds(run_id, entry_id),
        )
        now = _now_ms()
        results: list[AppendResult] = []
        written = 0
        for event, verdict in zip(events, plan, strict=True):
            if not verdict.write:
                results.append(AppendResult(event_id=None, duplicate=True))
                continue
            event_id = self._next_id(now)
            self._streams[run_id].append(
                _Entry(
                    event_id,
                    {
                        "type": event.type.value,
                        "corr": event.corr,
                        "data": event.payload,
                        "ts": str(now),
                        "v": str(SCHEMA_VERSION),
                    },
                )
            )
            written += 1
            corr = event.corr
            if event.type is EventType.HOOK_DISPOSED:
                token = status.get(sh.token_field(corr))
                if token is not None and self._hooks.get(token) == f"{run_id}|{corr}":
                    del self._hooks[token]
            if event.type is EventType.HOOK_CREATED and event.token:
                self._hooks[event.token] = f"{run_id}|{corr}"
            change = sh.Written(
                type=event.type,
                corr=corr,
                to=verdict.to,
                event_id=event_id,
                at=now,
                attempt=verdict.attempt if event.attempt is not None else None,
                workflow=event.workflow,
                fingerprint=event.fingerprint,
                token=event.token,
                retention_ms=event.retention_ms,
            )
            sh.record_written(status, change)
            if event.timer is not None:
                due = event.due_ms if event.due_ms is not None else now + (event.delay_ms or 0)
                self._timer_shard(run_id)[event.timer.member] = int(due)
            results.append(AppendResult(event_id=event_id, duplicate=False))
        if written:
            shard = self._active[shard_of(run_id, self.names.shards)]
            if status.get(sh.RUN) in RUN_TERMINAL_STATES:
                shard.pop(run_id, None)
                self._index_finished(run_id, status)
            else:
                shard[run_id] = now
            cond = self._condition(run_id)
            async with cond:
                cond.notify_all()
        return results

    def _index_finished(self, run_id: str, status: dict[str, str]) -> None:
        """Enter a run that just finished in its retention index, as the append script does."""
        shard = shard_of(run_id, self.names.shards)
        ended = int(status[sh.ENDED])
        if sh.RETENTION in status:
            self._retention[RemovalIndex.EXPIRE][shard][run_id] = ended + int(status[sh.RETENTION])
        else:
            self._retention[RemovalIndex.FINISHED][shard][run_id] = ended

    async def read(self, run_id: str, after: str = START, count: int | None = None) -> list[Event]:
        found = self._newer(run_id, after)
        return [e.event() for e in (found[:count] if count is not None else found)]

    async def wait(self, run_id: str, after: str, timeout: float) -> list[Event]:
        return [e.event() for e in await self._wait(run_id, after, timeout)]

    async def wait_for(
        self, run_id: str, after: str, timeout: float, types: frozenset[EventType]
    ) -> tuple[str, list[Event]]:
        """Filters on the raw type before decoding, as the Redis store does."""
        entries = await self._wait(run_id, after, timeout)
        if not entries:
            return after, []
        wanted = {t.value for t in types}
        return entries[-1].id, [e.event() for e in entries if e.type in wanted]

    async def _wait(self, run_id: str, after: str, timeout: float) -> list[_Entry]:
        cond = self._condition(run_id)
        async with cond:
            try:
                await asyncio.wait_for(
                    cond.wait_for(lambda: bool(self._newer(run_id, after))), timeout
                )
            except TimeoutError:
                return []
        return self._newer(run_id, after)

    def _newer(self, run_id: str, after: str) -> list[_Entry]:
        floor = id_order(after)
        return [e for e in self._streams.get(run_id, []) if id_order(e.id) > floor]

    async def status(self, run_id: str) -> dict[str, str]:
        return dict(self._status.get(run_id, {}))

    async def run_tail(self, run_id: str) -> tuple[str, str]:
        status = self._status.get(run_id, {})
        return status.get(sh.RUN, ""), status.get(sh.LAST, "")

    async def event_count(self, run_id: str) -> int:
        return int(self._status.get(run_id, {}).get(sh.COUNT, 0))

    async def active_runs(self, shard: int, limit: int = 1000) -> list[tuple[str, int]]:
        entries = sorted(self._active.get(shard, {}).items(), key=lambda kv: kv[1])
        return entries[:limit]

    async def count_active_runs(self) -> int:
        return sum(len(shard) for shard in self._active.values())

    async def count_timers(self) -> int:
        return sum(len(shard) for shard in self._timers.values())

    def _timer_shard(self, run_id: str) -> dict[str, int]:
        return self._timers[shard_of(run_id, self.names.shards)]

    async def claim_timers(self, limit: int, lease_ms: int) -> list[DueTimer]:
        now = _now_ms()
        due = sorted(
            (
                (score, member, shard)
                for shard in self._timers.values()
                for member, score in shard.items()
                if score <= now
            ),
            key=lambda item: item[0],
        )[:limit]
        claimed = []
        for score, member, shard in due:
            try:
                timer = Timer.parse(member)
            except MalformedMessageError as exc:
                del shard[member]
                quarantined(member, exc)
                continue
            shard[member] = now + lease_ms
            claimed.append(DueTimer(timer=timer, due=score, lease=now + lease_ms))
        return claimed

    async def release_timer(self, due: DueTimer) -> None:
        shard = self._timer_shard(due.timer.run_id)
        if shard.get(due.timer.member) == due.lease:
            del shard[due.timer.member]

    async def add_timer(
        self, timer: Timer, *, delay_ms: int | None = None, due_ms: int | None = None
    ) -> int:
        at = int(due_ms) if due_ms is not None else _now_ms() + int(delay_ms or 0)
        self._timer_shard(timer.run_id)[timer.member] = at
        return at

    async def pending_timers(self, run_id: str) -> list[tuple[Timer, int]]:
        found = []
        for member, score in self._timer_shard(run_id).items():
            try:
                timer = Timer.parse(member)
            except MalformedMessageError:
                continue  # not this run's: the claim removes it
            if timer.run_id == run_id:
                found.append((timer, score))
        return found

    async def entity(self, run_id: str, corr: str) -> EntityStatus:
        status = self._status.get(run_id, {})
        kind, state, attempt = sh.entity_of(status, corr)
        beat = status.get(sh.heartbeat_field(corr))
        return EntityStatus(
            run_state=status.get(sh.RUN, ""),
            kind=kind,
            state=state,
            attempt=attempt,
            created_id=status.get(sh.created_id_field(corr)),
            heartbeat=int(beat) if beat else None,
            now=_now_ms(),
            workflow=status.get(sh.WORKFLOW, ""),
        )

    async def read_event(self, run_id: str, event_id: str) -> Event | None:
        for entry in self._streams.get(run_id, []):
            if entry.id == event_id:
                return entry.event()
        return None

    async def statuses(self, run_ids: Sequence[str]) -> list[dict[str, str]]:
        return [dict(self._status.get(run_id, {})) for run_id in run_ids]

    async def read_events(self, refs: Sequence[tuple[str, str]]) -> list[Event | None]:
        return [await self.read_event(run_id, event_id) for run_id, event_id in refs]

    async def heartbeat(self, run_id: str, corr: str, attempt: int) -> bool:
        status = self._status.get(run_id, {})
        if sh.entity_of(status, corr) != ("step", StepStatus.STARTED, attempt):
            return False
        status[sh.heartbeat_field(corr)] = str(_now_ms())
        return True

    async def hook_owner(self, token: str) -> tuple[str, str] | None:
        owner = self._hooks.get(token)
        if owner is None:
            return None
        run_id, _, corr = owner.partition("|")
        return run_id, corr

    async def forget_hook(self, token: str, run_id: str, corr: str) -> None:
        if self._hooks.get(token) == f"{run_id}|{corr}":
            del self._hooks[token]

    async def run_states(self, run_ids: Sequence[str]) -> dict[str, str]:
        return {r: self._status.get(r, {}).get(sh.RUN, "") for r in run_ids}

    async def stale_runs(self, shard: int, older_than_ms: int, limit: int) -> list[tuple[str, int]]:
        entries = sorted(self._active.get(shard, {}).items(), key=lambda kv: kv[1])
        return [(run, seen) for run, seen in entries if seen <= older_than_ms][:limit]

    async def defer_check(self, run_id: str, seen: int, until_ms: int) -> bool:
        shard = self._active.get(shard_of(run_id, self.names.shards), {})
        if shard.get(run_id) != seen:
            return False
        shard[run_id] = until_ms
        return True

    async def list_runs(
        self,
        *,
        status: str | None = None,
        workflow: str | None = None,
        since_ms: int | None = None,
        limit: int = 50,
    ) -> list[RunSummary]:
        rows = [summary_of(run_id, dict(fields)) for run_id, fields in self._status.items()]
        found = [
            r
            for r in rows
            if r is not None
            and r.matches(status, workflow)
            and (since_ms is None or r.created_ms >= since_ms)
        ]
        found.sort(key=lambda r: r.created_ms, reverse=True)
        return found[:limit]

    async def is_listed(self, run_id: str) -> bool:
        return bool(self._status.get(run_id, {}).get(sh.CREATED))

    async def mark_alive(
        self, identity: str, ttl_ms: int, running: Collection[str] | None = None
    ) -> None:
        # Through the wire format, so both stores read back the same (caps included).
        self._presence[identity] = (_now_ms() + ttl_ms, decode_mark(encode_mark(running)))

    async def mark_gone(self, identity: str) -> None:
        self._presence.pop(identity, None)

    async def presence(self, identities: Sequence[str]) -> dict[str, frozenset[str] | None]:
        now = _now_ms()
        marks = {i: self._presence.get(i, (0, None)) for i in identities}
        return {i: runs for i, (until, runs) in marks.items() if until > now}

    async def now_ms(self) -> int:
        return _now_ms()

    async def is_active(self, run_id: str) -> bool:
        return run_id in self._active.get(shard_of(run_id, self.names.shards), {})

    async def rewrite_derived(self, run_id: str, expected: Expected, last_id: str) -> bool:
        stream = self._streams.get(run_id, [])
        if (stream[-1].id if stream else "") != last_id:
            return False
        old = self._status.get(run_id, {})
        fresh = dict(expected.status)
        fresh.update({k: v for k, v in old.items() if k.startswith(sh.VOLATILE)})
        self._status[run_id] = fresh
        shard = self._active[shard_of(run_id, self.names.shards)]
        if expected.active:
            shard.setdefault(run_id, _now_ms())
        else:
            shard.pop(run_id, None)
        for timer, due in expected.timers:
            self._timer_shard(run_id).setdefault(timer.member, due)
        self._hooks.update(expected.hooks)
        shard_no = shard_of(run_id, self.names.shards)
        for index in RemovalIndex:
            self._retention[index][shard_no].pop(run_id, None)
        if expected.retention is not None:
            index, score = expected.retention
            self._retention[index][shard_no][run_id] = score
        return True

    async def remove_run(self, run_id: str, *, expected_last: str | None = None) -> RemoveOutcome:
        status = self._status.get(run_id, {})
        state = status.get(sh.RUN, "")
        shard = shard_of(run_id, self.names.shards)
        if not state:
            for index in RemovalIndex:
                self._retention[index][shard].pop(run_id, None)
            return RemoveOutcome.NOT_FOUND
        if state not in RUN_TERMINAL_STATES:
            return RemoveOutcome.LIVE
        stream = self._streams.get(run_id, [])
        if expected_last is not None and expected_last != (stream[-1].id if stream else ""):
            return RemoveOutcome.MOVED
        for field, token in status.items():
            corr = field.removeprefix(sh.TOKEN)
            if corr != field and self._hooks.get(token) == f"{run_id}|{corr}":
                del self._hooks[token]
        timers = self._timer_shard(run_id)
        for member in implied_timer_members(run_id, [e.event() for e in stream]):
            timers.pop(member, None)
        self._active[shard].pop(run_id, None)
        for index in RemovalIndex:
            self._retention[index][shard].pop(run_id, None)
        self._streams.pop(run_id, None)
        self._status.pop(run_id, None)
        self.memory_blobs.forget_run(run_id)
        self._outputs.forget_run(run_id)
        return RemoveOutcome.REMOVED

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
        return self._outputs.write(
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
        return self._outputs.read(run_id, name, start, count)

    async def wait_output(
        self, run_id: str, name: str, start: int, timeout: float
    ) -> list[OutputEntry]:
        return await self._outputs.wait(run_id, name, start, timeout)

    async def output_names(self, run_id: str) -> list[str]:
        return self._outputs.names_of(run_id)

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
        return self._slots.acquire(limit, key, member, capacity, lease_ms, message, kind)

    async def release_slot(
        self, limit: str, key: str, member: str, capacity: int, lease_ms: int
    ) -> list[bytes]:
        return self._slots.release(limit, key, member, capacity, lease_ms)

    async def renew_slots(self, held: Sequence[tuple[str, str, str]], lease_ms: int) -> None:
        self._slots.renew(held, lease_ms)

    async def take_rate(
        self, limit: str, key: str, member: str, interval_ms: float, burst: int
    ) -> int:
        return self._rates.take(limit, key, member, interval_ms, burst)

    async def run_slot_holders(self) -> list[tuple[str, str, str, int]]:
        return self._slots.run_holders()

    async def slot_uses(self) -> list[SlotUse]:
        return self._slots.uses()

    async def promote_waiting(self, lease_ms: int) -> list[bytes]:
        return self._slots.promote(lease_ms)

    async def put_schedule(
        self, spec: ScheduleSpec, *, next_ms: int, replace: bool = False
    ) -> PutResult:
        return self.memory_schedules.put(spec, next_ms=next_ms, replace=replace)

    async def read_schedules(
        self, names: Sequence[str] | None = None
    ) -> list[Schedule | Unreadable]:
        return self.memory_schedules.read(names)

    async def delete_schedule(self, name: str) -> bool:
        return self.memory_schedules.delete(name)

    async def pause_schedule(self, name: str, *, paused: bool, next_ms: int) -> bool:
        return self.memory_schedules.pause(name, paused=paused, next_ms=next_ms)

    async def claim_schedules(self, limit: int, lease_ms: int) -> Claimed:
        return self.memory_schedules.claim(limit, lease_ms)

    async def advance_schedule(self, name: str, expected_next: int, advance: Advance) -> bool:
        return self.memory_schedules.advance(name, expected_next, advance)

    async def drop_schedule_claim(self, name: str) -> None:
        self.memory_schedules.drop_claim(name)

    async def schedule_lag(self) -> int:
        return self.memory_schedules.lag()

    async def remove_runs(self, run_ids: Sequence[str]) -> list[RemoveOutcome]:
        return [await self.remove_run(run_id) for run_id in run_ids]

    async def run_bytes(self, run_id: str) -> int:
        """The run's stored event data (payload bytes): the memory store's rough size."""
        return sum(len(e.fields["data"]) for e in self._streams.get(run_id, []))

    async def runs_bytes(self, run_ids: Sequence[str]) -> list[int]:
        return [await self.run_bytes(run_id) for run_id in run_ids]

    async def due_removals(
        self, index: RemovalIndex, shard: int, until_ms: int, limit: int
    ) -> list[str]:
        entries = sorted(self._retention[index][shard].items(), key=lambda kv: kv[1])
        return [run for run, score in entries if score <= until_ms][:limit]

    async def count_due_removals(self, now_ms: int, default_ms: int | None) -> int:
        due = sum(
            1
            for shard in self._retention[RemovalIndex.EXPIRE].values()
            for score in shard.values()
            if score <= now_ms
        )
        if default_ms is not None:
            due += sum(
                1
                for shard in self._retention[RemovalIndex.FINISHED].values()
                for score in shard.values()
                if score <= now_ms - default_ms
            )
        return due

    async def removal_entry(self, run_id: str) -> tuple[RemovalIndex, int] | None:
        shard = shard_of(run_id, self.names.shards)
        for index in (RemovalIndex.EXPIRE, RemovalIndex.FINISHED):
            score = self._retention[index][shard].get(run_id)
            if score is not None:
                return index, score
        return None

    async def close(self) -> None:
        return None
