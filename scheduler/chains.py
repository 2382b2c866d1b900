"""The writes and reads that link the runs of a ``lf.continue_as_new`` chain.

Four writes, in this order:

1. the old run's live hooks are disposed (reason ``CONTINUE_REASON``), so no
   payload can land on them any more; what they received that the code never
   took is read back and carried in the successor's run_created
   (``hook_payloads`` and ``hook_tokens``);
2. the successor's run_created (``create_successor``), so the old run's end
   never names a run that does not exist;
3. the old run's end (run_completed with ``continued_as``);
4. the successor's activation (``activate_successor``).

A crash after 1 or 2 leaves the old run unfinished, its log ending in writes the
reconciler counts as not acted on (``reconciler._unacted``): it activates the
run, the replay decides the same continuation (the same id, the same carried
payloads, as the disposed hooks' payloads are final), and a second run_created
is a duplicate. A crash after 3 leaves the successor created and never started,
which the reconciler also activates. The activation comes last so that a loop
over a hook with a fixed token creates that token again only once the old
run's hook is gone (it would be recorded as conflicted otherwise).

Readers follow ``continued_as`` from any run of the chain to its last one.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

from ledgerflow.broker import Activation, Broker
from ledgerflow.eventlog.errors import (
    ContinuationRunIdTakenError,
    IllegalTransitionError,
    WorkflowMismatchError,
)
from ledgerflow.eventlog.events import EventType, NewEvent, run_created
from ledgerflow.eventlog.kinds import RunStatus
from ledgerflow.eventlog.records import ParentRef, RunCompleted, RunCreated
from ledgerflow.eventlog.retrying import retrying
from ledgerflow.eventlog.store import EventLog, RunLog

from .replay import Continued

CONTINUE_REASON = "continued as new"
"""hook_disposed reason of a run's hooks disposed before it continues as new."""
MAX_HOPS = 10_000
"""Links one ``result()`` follows at most: a chain longer than that is a loop of ids."""


def continued_end(run_id: str, workflow: str, outcome: Continued) -> NewEvent:
    """The old run's terminal event: run_completed naming its successor."""
    data = RunCompleted(result=None, continued_as=outcome.run_id).as_data()
    return NewEvent.of(EventType.RUN_COMPLETED, data=data, what=f"end of run {run_id!r}")


async def create_successor(
    store: EventLog,
    run_id: str,
    workflow: str,
    outcome: Continued,
    parent: ParentRef | None,
    *,
    retention_ms: int | None = None,
) -> None:
    """Record the successor's run_created (idempotent); it is activated after the old end.

    The successor keeps its workflow's own retention, as any run of it does.

    The successor inherits the parent link, so a parent awaiting a child hears
    from the chain's last run. An id already taken by a run that does not
    continue this one raises ContinuationRunIdTakenError (the old run then fails
    with that reason rather than adopting a stranger).
    """
    record = RunCreated(
        workflow=workflow,
        args=outcome.args,
        kwargs=outcome.kwargs,
        parent=parent,
        continued_from=run_id,
        carried=outcome.carried,
        retention_ms=retention_ms,
    )
    created = run_created(record, what=f"arguments of lf.continue_as_new in workflow {workflow!r}")
    try:
        (result,) = await store.append(outcome.run_id, [created])
    except WorkflowMismatchError:
        raise _taken(run_id, outcome.run_id) from None
    if result.duplicate and await predecessor_of(store, outcome.run_id) != run_id:
        raise _taken(run_id, outcome.run_id)


async def activate_successor(broker: Broker, successor: str) -> None:
    """Publish the successor's activation (the old run has ended: its hooks are disposed)."""
    activation = Activation(run_id=successor, reason="continued")
    await retrying("publish activation", lambda: broker.publish_activation(activation))


async def abandon_successor(store: EventLog, run_id: str, successor: str) -> None:
    """The old run ended otherwise (cancelled meanwhile): its successor must never run."""
    reason = f"run {run_id} ended before it could continue as this run"
    cancelled = NewEvent.of(EventType.RUN_CANCELLED, data={"reason": reason})
    with contextlib.suppress(IllegalTransitionError):
        await store.append(successor, [cancelled])


async def predecessor_of(store: EventLog, run_id: str) -> str | None:
    """The run ``run_id`` continues, as its run_created says; None for a chain's first run."""
    first = await store.read(run_id, count=1)
    record = first[0].record if first else None
    return record.continued_from if isinstance(record, RunCreated) else None


async def successors(store: RunLog, run_ids: Sequence[str]) -> dict[str, str]:
    """The successor of each completed run that continued as new (for listings).

    Two round trips for the whole page: the runs' tails, then their last entries.
    """
    tails = await store.run_tails(run_ids)
    refs = [
        (run_id, last)
        for run_id, (state, last) in zip(run_ids, tails, strict=True)
        if state == RunStatus.COMPLETED and last
    ]
    found: dict[str, str] = {}
    for (run_id, _), end in zip(refs, await store.read_events(refs), strict=True):
        record = end.record if end is not None else None
        if isinstance(record, RunCompleted) and record.continued_as is not None:
            found[run_id] = record.continued_as
    return found


def _taken(run_id: str, successor: str) -> ContinuationRunIdTakenError:
    return ContinuationRunIdTakenError(
        f"run {run_id!r} cannot continue as new: its successor's id {successor!r} "
        "is taken by a run that does not continue it"
    )
