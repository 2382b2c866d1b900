"""How long the oldest waiting work has waited, read from the log rather than the queues.

A quorum work queue cannot be peeked: taking its head and giving it back raises
``x-delivery-count``, from which workers count a step's attempts. The log knows
the same thing without touching the broker, and is the truth besides: a step
is waiting for a worker from its ``step_created`` until its ``step_started``
(even if its message was lost), and a run is waiting for a scheduler from an
outcome (or its creation) until the scheduler writes something after it.

Only unfinished runs can have waiting work, so the scan walks the active-runs
index, bounded by ``max_runs`` and with pipelined reads (two round trips for
the whole batch after the index), so it stays cheap on a large namespace.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ledgerflow.eventlog import statushash as sh
from ledgerflow.eventlog.events import AWAITS_SCHEDULER, id_order
from ledgerflow.eventlog.kinds import StepStatus
from ledgerflow.eventlog.records import StepCreated
from ledgerflow.eventlog.store import RunIndex, RunLog

DEFAULT_MAX_RUNS = 10_000
_CREATED = sh.entity_value("step", StepStatus.CREATED)


@dataclass
class Backlog:
    """The oldest waiting work found by one scan, as Redis-clock ms (None: none waiting).

    ``steps`` maps a step queue's short name to when its oldest created-not-started
    step was created; ``runs`` is when the oldest unacted outcome was recorded.
    ``truncated`` says the scan stopped at ``max_runs``: the ages are then a lower
    bound over the runs it saw, not the whole namespace.
    """

    steps: dict[str, int] = field(default_factory=dict)
    runs: int | None = None
    runs_scanned: int = 0
    truncated: bool = False


def entry_ms(event_id: str) -> int:
    """The ms part of a stream entry id: when Redis appended it, by its own clock."""
    return id_order(event_id)[0]


async def _active_run_ids(store: RunIndex, max_runs: int) -> tuple[list[str], bool]:
    """Up to ``max_runs`` unfinished runs over every shard, and whether more exist."""
    run_ids: list[str] = []
    for shard in range(store.names.shards):
        room = max_runs - len(run_ids)
        # One more than there is room for, to tell "exactly full" from "cut short".
        found = await store.active_runs(shard, limit=room + 1)
        if len(found) > room:
            run_ids += [run_id for run_id, _ in found[:room]]
            return run_ids, True
        run_ids += [run_id for run_id, _ in found]
    return run_ids, False


async def oldest_waiting(store: RunLog, *, max_runs: int = DEFAULT_MAX_RUNS) -> Backlog:
    """Scan up to ``max_runs`` active runs for created-not-started steps and unacted outcomes.

    The status hash says which steps are still ``step.created`` and where their
    ``step_created`` entry is (``x:<corr>``); the queue is only in that event's
    data, so those entries are read, together with each run's newest entry
    (``last``), in one pipelined batch. Child-run steps (queue "") go to no step
    queue and are left out.
    """
    if max_runs < 1:
        raise ValueError(f"max_runs must be at least 1, not {max_runs}")
    run_ids, truncated = await _active_run_ids(store, max_runs)
    backlog = Backlog(runs_scanned=len(run_ids), truncated=truncated)
    refs: list[tuple[str, str]] = []
    lasts: set[tuple[str, str]] = set()
    for run_id, status in zip(run_ids, await store.statuses(run_ids), strict=True):
        for corr in sh.entity_corrs(status, _CREATED):
            created_id = status.get(sh.created_id_field(corr))
            if created_id:
                refs.append((run_id, created_id))
        last = status.get(sh.LAST)
        if last:
            refs.append((run_id, last))
            lasts.add((run_id, last))
    for (run_id, event_id), event in zip(refs, await store.read_events(refs), strict=True):
        if event is None:  # trimmed or deleted meanwhile: nothing to date it by
            continue
        if isinstance(event.record, StepCreated):
            if event.record.queue:  # a child run's step goes to no queue
                queue, when = event.record.queue, entry_ms(event_id)
                backlog.steps[queue] = min(backlog.steps.get(queue, when), when)
        elif (run_id, event_id) in lasts and event.type in AWAITS_SCHEDULER:
            backlog.runs = event.ts if backlog.runs is None else min(backlog.runs, event.ts)
    return backlog
