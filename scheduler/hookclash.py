"""A hook whose token is taken: recorded as conflicted, never a failed run.

Tokens are unique among live hooks. When the hook a workflow asks for clashes
with another live hook (of any run, or an earlier hook of the same batch), the
append refuses the batch and names the hook; the scheduler then records that
hook as created with ``conflict: {"run": owner}`` (without claiming the token)
followed at once by its disposal, and appends the batch again. Replay turns
that record into lf.HookConflictError where the workflow awaits the hook, the
same from the sticky cache as from scratch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import structlog
from ledgerflow.eventlog.errors import HookTokenConflictError
from ledgerflow.eventlog.events import AppendResult, EventType, NewEvent
from ledgerflow.eventlog.records import HOOK_CONFLICT
from ledgerflow.eventlog.store import EventLog

from .replay import HookCommand

log = structlog.get_logger("ledgerflow.scheduler")

CONFLICT_REASON = "token conflict"


def conflicted(command: HookCommand, owner_run: str) -> list[NewEvent]:
    """The record of a hook that never went live: created (token unclaimed), then disposed."""
    data = {"token": command.token, "metadata": command.metadata, HOOK_CONFLICT: {"run": owner_run}}
    return [
        NewEvent.of(EventType.HOOK_CREATED, command.corr, data, what="hook metadata"),
        NewEvent.of(EventType.HOOK_DISPOSED, command.corr, {"reason": CONFLICT_REASON}),
    ]


async def append_settling_clashes(
    store: EventLog,
    run_id: str,
    events: Sequence[NewEvent],
    hooks: Mapping[str, HookCommand],
    *,
    based_on: str | None = None,
) -> tuple[list[AppendResult], bool]:
    """Append one atomic batch, recording each hook whose token is taken as conflicted.

    Returns one result per event of ``events`` (the added disposals left out), and
    whether any hook conflicted. Each round turns one claiming hook_created into a
    non-claiming one, so this ends after at most one round per hook. ``based_on``:
    as for ``EventLog.append``, on every round.
    """
    batch = list(events)
    own = [True] * len(batch)  # False for the disposals added here
    clashed = False
    while True:
        try:
            results = await store.append(run_id, batch, based_on=based_on)
        except HookTokenConflictError as exc:
            i = _claiming(batch, exc.corr)
            command = hooks.get(exc.corr)
            if i is None or command is None:
                raise
            log.warning(
                "hook token taken; hook recorded as conflicted",
                run_id=run_id,
                corr=exc.corr,
                token=exc.token,
                owner_run=exc.owner_run,
            )
            batch[i : i + 1] = conflicted(command, exc.owner_run)
            own[i : i + 1] = [True, False]
            clashed = True
            continue
        return [r for r, mine in zip(results, own, strict=True) if mine], clashed


def _claiming(batch: list[NewEvent], corr: str) -> int | None:
    """Where the hook_created of ``corr`` that claims a token sits in the batch."""
    for i, event in enumerate(batch):
        if event.type is EventType.HOOK_CREATED and event.corr == corr and event.token:
            return i
    return None
