"""The event store's interfaces: nine narrow protocols and the whole store both stores implement.

A caller names only the protocol it uses (the log, the timer index, the run
index, presence, maintenance, output streams from ``outputs``, concurrency
slots from ``slots``, rate limits from ``rates``, schedules from ``schedules``;
or a small intersection of them declared beside it), so a reader sees at a glance
what it touches, and mypy refuses a call to anything else. ``EventStore`` is all
nine plus ``close``: what a process opens, owns and closes, and what the two
implementations (and one conformance suite) cover. Nothing asks which
implementation it has: a capability one lacks is a protocol it does not offer,
not an ``isinstance`` check.
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from . import statushash as sh
from .blobs import BlobStore
from .events import AppendResult, Event, EventType, NewEvent, id_order
from .names import Names
from .outputs import OutputStreams
from .rates import Rates
from .schedules import ScheduleStore
from .slots import Slots
from .timers import DueTimer, EntityStatus, Timer

if TYPE_CHECKING:
    from .derived import Expected

START = "0-0"


class RemoveOutcome(enum.StrEnum):
    """What ``remove_run`` did: removed it, or why it left the run alone."""

    REMOVED = "removed"
    NOT_FOUND = "not_found"  # no status hash: never created, or already removed
    LIVE = "live"  # refused: the run is not finished (live runs are never removed)
    MOVED = "moved"  # refused: the log's newest entry is not ``expected_last``


class RemovalIndex(enum.StrEnum):
    """Which retention index holds a finished run (and so what its score means)."""

    FINISHED = "finished"  # no retention of its own: scored by finish time
    EXPIRE = "expire"  # its workflow's retention: scored by when it is due


@dataclass(frozen=True, slots=True)
class RunSummary:
    """One line of a runs listing, read from the status hash (a cache of the log)."""

    run_id: str
    workflow: str
    status: str
    created_ms: int
    updated_ms: int
    events: int
    ended_ms: int | None = None  # when it finished (the terminal append's time); None: live

    def matches(self, status: str | None, workflow: str | None) -> bool:
        return (status is None or self.status == status) and (
            workflow is None or self.workflow == workflow
        )


def summary_of(run_id: str, status: dict[str, str]) -> RunSummary | None:
    """A listing line from a status hash; None for a run with no hash (not yet created)."""
    if not status.get(sh.RUN):
        return None
    last = status.get(sh.LAST, "")
    return RunSummary(
        run_id=run_id,
        workflow=status.get(sh.WORKFLOW, ""),
        status=status[sh.RUN],
        created_ms=int(status.get(sh.CREATED, "0") or 0),
        updated_ms=id_order(last)[0] if last else 0,
        events=int(status.get(sh.COUNT, "0") or 0),
        ended_ms=int(status[sh.ENDED]) if status.get(sh.ENDED) else None,
    )


class EventLog(Protocol):
    """The append-only per-run log: append a checked batch, read it back, wait for more.

    ``blob_store`` holds the run's offloaded values (``eventlog.blobs``): the append
    writes an event's blobs there before the entry; readers that hand values to user
    code fetch references from it.
    """

    blob_store: BlobStore

    @abstractmethod
    async def append(
        self, run_id: str, events: Sequence[NewEvent], *, based_on: str | None = None
    ) -> list[AppendResult]:
        """Check and append a batch atomically: all written (or duplicate), or none.

        Raises IllegalTransitionError (or RunClosedError / RunNotFoundError)
        naming the run, entity and states; nothing is written then. ``based_on``
        (an entry id) makes the append conditional on the log still holding that
        entry: a decision made from a log a failover has since cut short is refused
        with LogTruncatedError instead of recorded on a history that lost its basis.
        """

    @abstractmethod
    async def read(self, run_id: str, after: str = START, count: int | None = None) -> list[Event]:
        """Events strictly after the id ``after``, in log order."""

    @abstractmethod
    async def wait(self, run_id: str, after: str, timeout: float) -> list[Event]:
        """Block until events exist after ``after`` or ``timeout`` seconds pass."""

    async def wait_for(
        self, run_id: str, after: str, timeout: float, types: frozenset[EventType]
    ) -> tuple[str, list[Event]]:
        """Like ``wait``, but only events of ``types``, plus the id of the newest event seen.

        A waiter for a run's end need not decode every step result on the way:
        the Redis store filters on the raw type field before decoding.
        """
        events = await self.wait(run_id, after, timeout)
        cursor = events[-1].id if events else after
        return cursor, [e for e in events if e.type in types]

    @abstractmethod
    async def read_event(self, run_id: str, event_id: str) -> Event | None: ...

    @abstractmethod
    async def read_events(self, refs: Sequence[tuple[str, str]]) -> list[Event | None]:
        """Many (run_id, event_id) entries in one round trip, in the order asked."""

    @abstractmethod
    async def now_ms(self) -> int:
        """The store's clock (Redis TIME), the one event timestamps use."""


class RunIndex(Protocol):
    """Where each run stands: the status hash, the active-runs and runs indexes, hook tokens.

    All of it derived from the logs (a cache, never the truth); ``names`` says how
    many shards the active-runs index has, for callers that walk them.
    """

    names: Names

    @abstractmethod
    async def status(self, run_id: str) -> dict[str, str]:
        """The run's status hash: a cache of the fold, never the truth."""

    @abstractmethod
    async def statuses(self, run_ids: Sequence[str]) -> list[dict[str, str]]:
        """Many runs' status hashes in one round trip, in the order asked ({} if none).

        Backlog scans read thousands of hashes; one request each would take longer
        than the answer stays true.
        """

    @abstractmethod
    async def run_tail(self, run_id: str) -> tuple[str, str]:
        """(run state, id of the log's last entry) from the status hash; ("", "") if none.

        Two fields, not the whole hash: a long run's hash has a field per step.
        """

    @abstractmethod
    async def event_count(self, run_id: str) -> int:
        """How many entries the run's log holds, from the status hash (0 if none).

        One field: the scheduler checks it against the history limit before it
        reads a whole log into memory.
        """

    async def run_tails(self, run_ids: Sequence[str]) -> list[tuple[str, str]]:
        """``run_tail`` of many runs; stores override it with one round trip."""
        return [await self.run_tail(run_id) for run_id in run_ids]

    @abstractmethod
    async def run_states(self, run_ids: Sequence[str]) -> dict[str, str]:
        """Each run's state ("" if unknown) in one round trip: for cancellation checks."""

    @abstractmethod
    async def entity(self, run_id: str, corr: str) -> EntityStatus:
        """One step/wait/hook's state as the status hash has it, with the store's clock."""

    async def exists(self, run_id: str) -> bool:
        return bool((await self.status(run_id)).get("run"))

    @abstractmethod
    async def active_runs(self, shard: int, limit: int = 1000) -> list[tuple[str, int]]:
        """(run_id, last progress ms) of unfinished runs in one index shard, oldest first."""

    @abstractmethod
    async def count_active_runs(self) -> int:
        """Unfinished runs in every shard of the active-runs index (one round trip)."""

    @abstractmethod
    async def list_runs(
        self,
        *,
        status: str | None = None,
        workflow: str | None = None,
        since_ms: int | None = None,
        limit: int = 50,
    ) -> list[RunSummary]:
        """The newest runs first (by creation time), filtered; reads the runs index."""

    @abstractmethod
    async def hook_owner(self, token: str) -> tuple[str, str] | None:
        """(run_id, corr) of the live hook with this token, if any."""

    @abstractmethod
    async def forget_hook(self, token: str, run_id: str, corr: str) -> None:
        """Drop a token whose run ended without disposing it (a race with cancellation)."""


class TimerIndex(Protocol):
    """What wakes a retrying step, a sleep or a heartbeat check (derived, rebuilt from the log)."""

    @abstractmethod
    async def claim_timers(self, limit: int, lease_ms: int) -> list[DueTimer]:
        """Due timers of every shard, leased to the caller for ``lease_ms``."""

    @abstractmethod
    async def release_timer(self, due: DueTimer) -> None:
        """Drop a claimed timer once acted on (unless it was re-armed meanwhile)."""

    @abstractmethod
    async def add_timer(
        self, timer: Timer, *, delay_ms: int | None = None, due_ms: int | None = None
    ) -> int:
        """Arm (or re-arm) a timer; returns its due time in ms."""

    @abstractmethod
    async def pending_timers(self, run_id: str) -> list[tuple[Timer, int]]:
        """A run's armed timers (for checks and repairs); scans its shard."""

    @abstractmethod
    async def count_timers(self) -> int:
        """Entries in every shard of the timer index (one round trip)."""


class Presence(Protocol):
    """Who is alive: workers' presence marks and running steps' heartbeats."""

    @abstractmethod
    async def mark_alive(
        self, identity: str, ttl_ms: int, running: Collection[str] | None = None
    ) -> None:
        """Say the worker ``identity`` is alive for the next ``ttl_ms``, holding ``running``.

        ``running``: the runs it holds a step attempt of (``eventlog.presence`` says
        why); None: not said (read back as "any").
        """

    @abstractmethod
    async def mark_gone(self, identity: str) -> None:
        """A worker that stops cleanly says so at once rather than letting the mark expire."""

    @abstractmethod
    async def presence(self, identities: Sequence[str]) -> dict[str, frozenset[str] | None]:
        """The workers of these with a live mark, each with the runs its mark lists (or None)."""

    async def alive(self, identities: Sequence[str]) -> set[str]:
        """Which of these workers have a live mark."""
        return set(await self.presence(identities))

    @abstractmethod
    async def heartbeat(self, run_id: str, corr: str, attempt: int) -> bool:
        """Record that attempt ``attempt`` of step ``corr`` is alive; False if it is not running."""


class Maintenance(Protocol):
    """Checking and rebuilding derived state: the reconciler's scan, verify and repair."""

    names: Names

    @abstractmethod
    async def stale_runs(self, shard: int, older_than_ms: int, limit: int) -> list[tuple[str, int]]:
        """(run_id, score) of unfinished runs of one index shard due for a check, oldest first.

        A run's score is its last progress (every append sets it to now), pushed
        later by the reconciler when it has checked the run (``defer_check``).
        """

    @abstractmethod
    async def defer_check(self, run_id: str, seen: int, until_ms: int) -> bool:
        """Move an unfinished run's score to ``until_ms`` if it is still ``seen``.

        Only if unchanged: an append in the meantime (progress) has already set
        the score to now, and that must win. Never re-adds a finished run.
        """

    @abstractmethod
    async def is_active(self, run_id: str) -> bool:
        """Is the run in the active-runs index?"""

    @abstractmethod
    async def is_listed(self, run_id: str) -> bool:
        """Whether the runs index holds the run (the derived-state checker asks)."""

    @abstractmethod
    async def rewrite_derived(self, run_id: str, expected: Expected, last_id: str) -> bool:
        """Rewrite the run's status hash and index entries; False if the stream moved on."""

    @abstractmethod
    async def remove_run(self, run_id: str, *, expected_last: str | None = None) -> RemoveOutcome:
        """Remove everything of a finished run, atomically: all of it, or nothing.

        Its stream, status hash, offloaded blobs, its entries in every index
        (runs, active, finished, expire, timers) and the hook tokens it still
        owns. A live run is refused (LIVE); with ``expected_last``, so is a run
        whose newest entry differs (MOVED), so an archive never deletes a run that
        changed after it was read. Readers afterwards see no run at all. With
        no run (NOT_FOUND) a leftover retention-index entry is dropped too.
        """

    @abstractmethod
    async def remove_runs(self, run_ids: Sequence[str]) -> list[RemoveOutcome]:
        """``remove_run`` of each run (without ``expected_last``), in order: the janitor's
        page at once. Each run is still removed atomically, on its own."""

    @abstractmethod
    async def run_bytes(self, run_id: str) -> int:
        """Roughly how many bytes the run holds (stream and status hash; 0 if none)."""

    @abstractmethod
    async def runs_bytes(self, run_ids: Sequence[str]) -> list[int]:
        """``run_bytes`` of each run, in order."""

    @abstractmethod
    async def due_removals(
        self, index: RemovalIndex, shard: int, until_ms: int, limit: int
    ) -> list[str]:
        """Runs in one shard of a retention index scored at most ``until_ms``, oldest first."""

    @abstractmethod
    async def count_due_removals(self, now_ms: int, default_ms: int | None) -> int:
        """Finished runs past their retention (the namespace default: ``default_ms``, if any)."""

    @abstractmethod
    async def removal_entry(self, run_id: str) -> tuple[RemovalIndex, int] | None:
        """Which retention index holds the run, and its score there (None: neither)."""


class RunLog(EventLog, RunIndex, Protocol):
    """A run's log together with where it stands: what most run-level code reads and writes."""


class EventStore(
    EventLog,
    RunIndex,
    TimerIndex,
    Presence,
    Maintenance,
    OutputStreams,
    Slots,
    Rates,
    ScheduleStore,
    ABC,
):
    """The whole store: append-only per-run logs plus the derived indexes the append keeps in step.

    What a process opens and closes; what ``RedisEventStore`` and
    ``MemoryEventStore`` implement. Code that only uses part of it takes one of
    the protocols above instead.
    """

    names: Names

    @abstractmethod
    async def close(self) -> None: ...

    async def __aenter__(self) -> EventStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
