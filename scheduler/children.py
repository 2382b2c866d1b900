"""Child workflows: start them from the parent, report their end back to it.

A child is recorded in the parent's log as a step (``records.StepCreated.child``)
(created when the parent asks, started when the child's run_created is
written, completed or failed with the child's outcome), and the child's
run_created carries ``parent: {run_id, corr}``: linked in both logs, and no new
event types. Every write here is idempotent, so a crash between two of them is
repaired by doing them again on the next activation.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable

from ledgerflow.broker import Activation, Broker
from ledgerflow.eventlog import codec, records
from ledgerflow.eventlog.blobs import Blob, BlobRef, check_declared
from ledgerflow.eventlog.errors import (
    ChildRunIdTakenError,
    IllegalTransitionError,
    RunCancelled,
    WorkflowMismatchError,
    error_type_name,
)
from ledgerflow.eventlog.events import Event, EventType, NewEvent, run_created
from ledgerflow.eventlog.kinds import StepStatus
from ledgerflow.eventlog.records import (
    ParentRef,
    RunCompleted,
    RunCreated,
    RunFailed,
    decode_record,
)
from ledgerflow.eventlog.retrying import retrying
from ledgerflow.eventlog.store import EventLog, RunLog
from ledgerflow.worker.outcome import bounded_error, failed

from .replay import ChildCommand, child_run_id


async def start_child(
    store: RunLog,
    broker: Broker,
    parent_run_id: str,
    command: ChildCommand,
    *,
    retention_ms: int | None = None,
) -> None:
    """Record the child's run_created (with its own workflow's retention) and activate it."""
    record = RunCreated(
        workflow=command.workflow,
        args=command.args,
        kwargs=command.kwargs,
        parent=ParentRef(parent_run_id, command.corr),
        retention_ms=retention_ms,
        priority=command.priority,
    )
    created = run_created(record, what=f"arguments of child workflow {command.workflow!r}")
    try:
        (result,) = await store.append(command.child_run_id, [created])
    except WorkflowMismatchError:
        await _id_taken(store, broker, parent_run_id, command)
        return
    if result.duplicate and not await _is_our_child(store, parent_run_id, command):
        await _id_taken(store, broker, parent_run_id, command)
        return
    entity = await store.entity(parent_run_id, command.corr)
    if entity.state == StepStatus.CREATED:
        started = NewEvent.of(
            EventType.STEP_STARTED, command.corr, {"child_run_id": command.child_run_id}, attempt=1
        )
        try:
            await store.append(parent_run_id, [started])
        except IllegalTransitionError:
            # The parent ended (say, cancelled) before the child's start was recorded:
            # the child must not run orphaned.
            cancelled = NewEvent.of(EventType.RUN_CANCELLED, data={"reason": "parent run ended"})
            with contextlib.suppress(IllegalTransitionError):
                await store.append(command.child_run_id, [cancelled])
            return
    elif result.duplicate:
        return  # started before, by this or another scheduler
    activation = Activation(run_id=command.child_run_id, reason="child")
    await retrying("publish activation", lambda: broker.publish_activation(activation))


async def _is_our_child(store: EventLog, parent_run_id: str, command: ChildCommand) -> bool:
    """Whether the run already at the child's id was started as this child, by this parent.

    Child run ids are predictable (``<parent>.s3``), so a producer may have taken
    one first; adopting that run would leave the parent waiting for a report that
    never comes (that run knows no parent).
    """
    first = await store.read(command.child_run_id, count=1)
    return bool(first) and parent_of(first[0]) == ParentRef(parent_run_id, command.corr)


async def _id_taken(
    store: RunLog, broker: Broker, parent_run_id: str, command: ChildCommand
) -> None:
    """Fail the child's step in the parent, saying why: the workflow may catch it."""
    error = ChildRunIdTakenError(
        f"cannot start child workflow {command.workflow!r}: run id "
        f"{command.child_run_id!r} is taken by a run that is not this child"
    )
    batch = [
        NewEvent.of(EventType.STEP_STARTED, command.corr, {}, attempt=1),
        failed(command.corr, 1, error),
    ]
    try:
        await store.append(parent_run_id, batch)
    except IllegalTransitionError:
        return  # the parent moved on (ended, or the step was settled meanwhile)
    activation = Activation(run_id=parent_run_id, reason="child")
    await retrying("publish activation", lambda: broker.publish_activation(activation))


async def _carried_blobs(
    store: RunLog, child_run: str, record: RunCompleted, terminal: Event | NewEvent
) -> tuple[Blob, ...]:
    """A child's offloaded result, copied into the parent's run with the same reference.

    Blobs are per run (removed with it), so the parent's step_completed must not point
    into the child's keys: the bytes are copied, verified, not decoded.
    """
    ref = record.result
    if not isinstance(ref, BlobRef):
        return ()
    if isinstance(terminal, NewEvent):
        return tuple(blob for blob in terminal.blobs if blob.ref == ref)
    check_declared(child_run, ref)
    return (Blob(ref, await store.blob_store.get_blob(child_run, ref)),)


def parent_of(first: Event) -> ParentRef | None:
    """The parent a child's run_created names; None for a top-level run."""
    return first.record.parent if isinstance(first.record, RunCreated) else None


PublishActivation = Callable[[Activation], Awaitable[object]]


async def report_to_parent(
    store: RunLog,
    broker: Broker,
    parent: ParentRef,
    terminal: Event | NewEvent,
    *,
    publish_activation: PublishActivation | None = None,
) -> None:
    """Record a finished child's outcome as its step's outcome in the parent's log.

    The parent's activation is published with ``publish_activation`` if given (a producer's
    bounded retry), else retried the way daemons retry.
    """
    parent_run, corr = parent.run_id, parent.corr
    if isinstance(terminal, Event):
        record = terminal.record
    else:
        decoded = codec.decode(terminal.payload, max_size=codec.MAX_EVENT_BYTES)
        record = decode_record(terminal.type, decoded)
    if isinstance(record, RunCompleted) and record.continued_as is not None:
        return  # one link of a chain: its successor carries the parent link, and reports
    if isinstance(record, RunCompleted):
        outcome = NewEvent.of(
            EventType.STEP_COMPLETED,
            corr,
            {"result": record.result},
            attempt=1,
            max_size=None,
            blobs=await _carried_blobs(store, child_run_id(parent_run, corr), record, terminal),
        )
    else:
        reason = record.reason if isinstance(record, records.RunCancelled) else ""
        error = bounded_error(
            record.error.as_data()
            if isinstance(record, RunFailed)
            else {
                "type": error_type_name(RunCancelled),
                "message": f"the child run was cancelled: {reason}",
            }
        )
        outcome = NewEvent.of(
            EventType.STEP_FAILED, corr, {"error": error}, attempt=1, max_size=None
        )
    entity = await store.entity(parent_run, corr)
    batch = [outcome]
    if entity.state == StepStatus.CREATED:
        batch.insert(0, NewEvent.of(EventType.STEP_STARTED, corr, {}, attempt=1))
    try:
        await store.append(parent_run, batch)
    except IllegalTransitionError:
        return  # the parent already ended
    activation = Activation(run_id=parent_run, reason="child")
    if publish_activation is not None:
        await publish_activation(activation)
        return
    await retrying("publish activation", lambda: broker.publish_activation(activation))
