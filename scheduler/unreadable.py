"""A run whose log holds an event no deploy can read: fail it, once, saying which event.

An event too deep, too large or malformed (written around ledgerflow: an XADD
needs no ledgerflow code) would make every activation of its run fail in the
same way; redelivering the activation until the queue's delivery limit only
hides the cause in the dead-letter queue. Such a run cannot go on, so the
scheduler ends it with ``run_failed``, whose error names the event and why.

An event naming a class this process may not rebuild is different: a deploy
can fix that (register the class, allow its module), so the scheduler parks
the activation in the dead-letter queue instead of failing the run.
"""

from __future__ import annotations

import structlog
from ledgerflow.broker import Broker
from ledgerflow.eventlog import codec
from ledgerflow.eventlog.errors import IllegalTransitionError, RunNotFoundError, SerializationError
from ledgerflow.eventlog.events import Event, EventType, NewEvent
from ledgerflow.eventlog.fold import fold
from ledgerflow.eventlog.kinds import HookStatus
from ledgerflow.eventlog.store import EventLog, RunLog

from .children import parent_of, report_to_parent

log = structlog.get_logger("ledgerflow.scheduler")


async def fail_unreadable_run(
    store: RunLog, broker: Broker, run_id: str, error: SerializationError, failed: NewEvent
) -> None:
    """Append ``failed`` (run_failed carrying ``error``), disposing the run's live hooks.

    The log is read for its structure only (``codec.inspecting``: unreadable data
    becomes a marker), which is all it takes to find the live hooks and a parent
    to tell. A run that already ended, or was never created, is left as it is.
    """
    log.error("run failed: an event in its log cannot be read", run_id=run_id, error=str(error))
    events = await _structure(store, run_id)
    state = fold(run_id, events)
    if state.finished:
        return
    batch = [
        NewEvent.of(EventType.HOOK_DISPOSED, hook.id)
        for hook in state.hooks.values()
        if hook.status == HookStatus.CREATED
    ]
    try:
        await store.append(run_id, [*batch, failed])
    except (IllegalTransitionError, RunNotFoundError) as exc:
        log.warning("unreadable run left as it is", run_id=run_id, reason=str(exc))
        return
    parent = parent_of(events[0]) if events else None
    if parent is not None:
        await report_to_parent(store, broker, parent, failed)


async def _structure(store: EventLog, run_id: str) -> list[Event]:
    try:
        with codec.inspecting():
            return await store.read(run_id)
    except SerializationError:
        # Not even an entry's type is readable: fail the run without looking further.
        return []
