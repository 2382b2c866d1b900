"""Cancelling a run and its children: one procedure for producers and schedulers.

``Client.cancel`` (a producer, an operator) and a scheduler failing a run at its
timeout both need it: the run's end is recorded with its live hooks disposed in
the same batch, its running children are cancelled in turn, and its parent (if
any) is told. Kept here so both call the same code.
"""

from __future__ import annotations

import contextlib

from ledgerflow.broker import Broker
from ledgerflow.eventlog import codec
from ledgerflow.eventlog.errors import RunClosedError, RunNotFoundError
from ledgerflow.eventlog.events import Event, EventType, NewEvent
from ledgerflow.eventlog.fold import RunState, fold
from ledgerflow.eventlog.kinds import HookStatus, RunStatus, StepStatus
from ledgerflow.eventlog.store import RunLog
from ledgerflow.eventlog.text import MAX_MESSAGE, clip, safe_str

from .chains import MAX_HOPS
from .children import PublishActivation, parent_of, report_to_parent

CANCEL_ATTEMPTS = 5
"""Reads of a run a cancel makes when it ends (or continues as new) under it, before giving up."""

Publisher = PublishActivation | None


async def chain_head(store: RunLog, run_id: str) -> tuple[str, list[Event], RunState]:
    """The run that runs now for ``run_id`` (its last continuation), its log and state.

    Only the run's structure matters to a cancel (hooks, children), so a run holding
    data this process cannot decode can still be cancelled.
    """
    for _ in range(MAX_HOPS + 1):
        with codec.inspecting():
            events = await store.read(run_id)
        if not events:
            raise RunNotFoundError(run_id)
        state = fold(run_id, events)
        if state.continued_as is None:
            return run_id, events, state
        run_id = state.continued_as  # continued as new: what runs now is its successor
    raise RunClosedError(run_id, "run", "continued", EventType.RUN_CANCELLED.value)


async def cancel_run(
    store: RunLog, broker: Broker, run_id: str, reason: str, *, publish: Publisher = None
) -> None:
    """Record run_cancelled (hooks disposed with it), cancel its children, tell its parent.

    Cancelling a cancelled run does nothing; a completed or failed one raises
    RunClosedError. ``publish``: how the parent's activation is sent (a producer's
    bounded retry); None retries the way daemons do.
    """
    # The reason is the caller's text: bounded like every error text recorded.
    cancelled = NewEvent.of(
        EventType.RUN_CANCELLED, data={"reason": clip(safe_str(reason), MAX_MESSAGE)}
    )
    for attempt in range(CANCEL_ATTEMPTS):
        run_id, events, state = await chain_head(store, run_id)
        if state.status == RunStatus.CANCELLED:
            return
        if state.finished:
            raise RunClosedError(run_id, "run", state.status, EventType.RUN_CANCELLED.value)
        batch = [
            NewEvent.of(EventType.HOOK_DISPOSED, hook.id)
            for hook in state.hooks.values()
            if hook.status == HookStatus.CREATED
        ]
        try:
            await store.append(run_id, [*batch, cancelled])
            break
        except RunClosedError:
            # It ended between the read and the append (it continued as new, or
            # finished): look again, and follow the chain or report the end.
            if attempt == CANCEL_ATTEMPTS - 1:
                raise
    reason_for_children = f"parent run {run_id} was cancelled"
    await cancel_children(store, broker, state, reason_for_children, publish=publish)
    parent = parent_of(events[0])
    if parent is not None:
        await report_to_parent(store, broker, parent, cancelled, publish_activation=publish)


async def cancel_children(
    store: RunLog, broker: Broker, state: RunState, reason: str, *, publish: Publisher = None
) -> None:
    """Cancel every child run ``state`` shows as not finished (one that ended meanwhile is left)."""
    for step in state.steps.values():
        if step.child_run_id and step.status in (StepStatus.CREATED, StepStatus.STARTED):
            with contextlib.suppress(RunClosedError, RunNotFoundError):
                await cancel_run(store, broker, step.child_run_id, reason, publish=publish)


async def cancel_children_of(store: RunLog, broker: Broker, run_id: str, reason: str) -> None:
    """``cancel_children`` for a run that has just ended, read from its log."""
    with codec.inspecting():
        events = await store.read(run_id)
    if events:
        await cancel_children(store, broker, fold(run_id, events), reason)
