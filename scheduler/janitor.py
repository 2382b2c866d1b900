"""The janitor: removes finished runs whose retention has passed, in bounded pages.

The terminal append enters every finished run in one of two sharded indexes
(``eventlog.names``): the expire index, scored by when the run is due (its
workflow declared a retention), or the finished index, scored by when it
finished (no retention of its own). Each sweep the janitor takes what is due:
from the expire shards every run scored at most now, and, only when the
namespace has a default retention, from the finished shards every run that
finished at least that long ago. So a new default applies to runs that
finished before it was set, and no default means those runs are kept.

By default a page of due runs is removed at once (``remove_runs``: one
atomic script per run, all of the run or nothing, the page's reads and
scripts each in one round trip), after one lease check for the page. One
run at a time, six round trips and a lease check each, the janitor removed a
few hundred runs a second on a core: below what two workers finish, so under
a steady load of short runs with a short retention the due runs piled up and
Redis memory grew. With ``--retention-archive`` each run instead goes to the
disposer, an archiver that writes the run somewhere and then removes it, one
run at a time with a lease check before each. Neither touches a live run
(removal refuses one), so a run that is refused stays where it is, logged, and
the sweep goes on. The janitor runs inside the reconciler daemon, under its
lease: a janitor that lost the lease stops before its next page (or run).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import structlog
from ledgerflow.eventlog import statushash as sh
from ledgerflow.eventlog.kinds import RUN_TERMINAL_STATES
from ledgerflow.eventlog.store import (
    EventLog,
    EventStore,
    Maintenance,
    RemovalIndex,
    RemoveOutcome,
)

from ledgerflow.ops.observer import Observer, Observers
from ledgerflow.ops.standard import standard_observers

log = structlog.get_logger("ledgerflow.janitor")

PAGE = 200
"""Runs read from one shard of a retention index at a time."""
RUNS_PER_SHARD = 2_000
"""Runs one sweep disposes of per shard at most; the rest stay due and come first next time."""

Dispose = Callable[[str], Awaitable[RemoveOutcome]]
"""Dispose of one finished run by id: archive it, then remove it (``--retention-archive``)."""
Fence = Callable[[], Awaitable[None]]
"""Raises if this process may no longer act (the reconciler lost its lease)."""


class JanitorStore(EventLog, Maintenance, Protocol):
    """What the janitor uses: the clock, the retention indexes, run sizes and removal."""


@dataclass
class JanitorReport:
    """What one sweep did: runs removed, their approximate bytes, and runs left alone."""

    removed: int = 0
    bytes_removed: int = 0
    left: Counter[str] = field(default_factory=Counter)  # outcome -> runs not removed


class Janitor:
    def __init__(
        self,
        store: JanitorStore,
        *,
        default_retention_ms: int | None = None,
        dispose: Dispose | None = None,
        observers: Sequence[Observer] | None = None,
        page: int = PAGE,
        runs_per_shard: int = RUNS_PER_SHARD,
    ) -> None:
        self.store = store
        self.default_retention_ms = default_retention_ms
        self.dispose = dispose  # None: remove each page at once (remove_runs)
        self.observers = Observers(standard_observers() if observers is None else observers)
        self.page = page
        self.runs_per_shard = runs_per_shard

    async def sweep(self, fence: Fence | None = None) -> JanitorReport:
        """Dispose of every run past its retention (at most ``runs_per_shard`` per shard)."""
        report = JanitorReport()
        now = await self.store.now_ms()
        due: list[tuple[RemovalIndex, int]] = [(RemovalIndex.EXPIRE, now)]
        if self.default_retention_ms is not None:
            due.append((RemovalIndex.FINISHED, now - self.default_retention_ms))
        for index, until in due:
            for shard in range(self.store.names.shards):
                await self._sweep_shard(index, shard, until, report, fence)
        if report.removed or report.left:
            log.info(
                "retention sweep",
                removed=report.removed,
                bytes_removed=report.bytes_removed,
                left=dict(report.left),
            )
        return report

    async def _sweep_shard(
        self,
        index: RemovalIndex,
        shard: int,
        until: int,
        report: JanitorReport,
        fence: Fence | None,
    ) -> None:
        seen: set[str] = set()
        while len(seen) < self.runs_per_shard:
            want = min(self.page, self.runs_per_shard - len(seen))
            page = [
                r
                for r in await self.store.due_removals(index, shard, until, want + len(seen))
                if r not in seen
            ][:want]
            if not page:
                return
            seen.update(page)
            if self.dispose is None:
                if fence is not None:
                    await fence()
                sizes = await self.store.runs_bytes(page)
                outcomes = await self.store.remove_runs(page)
                for run_id, size, outcome in zip(page, sizes, outcomes, strict=True):
                    self._account(run_id, size, outcome, report)
                continue
            for run_id in page:
                if fence is not None:
                    await fence()
                size = await self.store.run_bytes(run_id)
                self._account(run_id, size, await self.dispose(run_id), report)

    def _account(
        self, run_id: str, size: int, outcome: RemoveOutcome, report: JanitorReport
    ) -> None:
        if outcome is RemoveOutcome.REMOVED:
            report.removed += 1
            report.bytes_removed += size
            self.observers.after_run_removed(run_id, size)
            log.debug("run removed: retention passed", run_id=run_id, bytes=size)
            return
        report.left[outcome.value] += 1
        if outcome is not RemoveOutcome.NOT_FOUND:  # already gone: nothing to say
            log.warning("run past its retention left in place", run_id=run_id, outcome=outcome)


async def finished_before(
    store: EventStore,
    before_ms: int,
    *,
    statuses: frozenset[str] = frozenset(RUN_TERMINAL_STATES),
    limit: int,
) -> list[str]:
    """Up to ``limit`` finished runs, finished at or before ``before_ms``, with a status asked:
    what an operator's ``runs archive`` and ``runs delete`` select.

    Read from the retention indexes, oldest first per shard, a page of each: the
    finished index is scored by finish time; the expire index (runs with a
    retention of their own) by when they are due, so there the finish time in
    the status hash decides. Runs a filter skips stay in the index, so one call
    looks at most at ``SELECT_PAGE`` runs per shard and index; archiving removes what
    it takes, so the next call sees the next ones.
    """
    found: dict[str, None] = {}
    for shard in range(store.names.shards):
        if len(found) >= limit:
            break
        page = SELECT_PAGE
        candidates = await store.due_removals(RemovalIndex.FINISHED, shard, before_ms, page)
        candidates += await store.due_removals(RemovalIndex.EXPIRE, shard, _FAR_FUTURE_MS, page)
        for run_id, status in zip(candidates, await store.statuses(candidates), strict=True):
            ended = int(status.get(sh.ENDED, "0") or 0)
            if status.get(sh.RUN) in statuses and ended <= before_ms:
                found[run_id] = None
    return list(found)[:limit]


SELECT_PAGE = 10_000
"""Runs ``finished_before`` reads per shard and index (the janitor's own page is ``PAGE``)."""
_FAR_FUTURE_MS = 2**53
