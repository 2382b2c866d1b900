"""May this batch be appended? The one decision procedure, for both stores.

The in-memory store calls ``decide_batch``; the Redis store's append script is
rendered from the same parts (``integrity.lua_checks`` for the arguments,
``transitions.lua_table`` for the transitions) and makes the same checks in the
same order, and the conformance suite (tests/eventlog/test_store_conformance.py)
runs every case against both. A batch is decided whole before anything is
written: every argument, every transition, then the claims earlier events of
the batch make (a step's call fingerprint, a hook's token).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from .errors import LogTruncatedError, StepMismatchError
from .events import EventType, NewEvent
from .integrity import (
    check_based_on,
    check_batch,
    fingerprint_difference,
    token_conflict,
    wire,
)
from .statushash import EntityState
from .transitions import ABSENT, Planned, plan_batch


def decide_batch(
    run_id: str,
    events: Sequence[NewEvent],
    *,
    run_state: str,
    stored_workflow: str,
    entity_state: Callable[[str], EntityState],
    logged_fingerprint: Callable[[str], str],
    token_owner: Callable[[str], str | None],
    based_on: str | None = None,
    log_holds: Callable[[str], bool] | None = None,
) -> list[Planned]:
    """The verdict on every event, or the error the append raises (nothing written).

    ``entity_state(corr)`` answers (kind, state, attempt), ``logged_fingerprint(corr)``
    the step's recorded call fingerprint ("" for none) and ``token_owner(token)`` the
    "run|corr" holding a hook token, all as stored before the batch. With ``based_on``,
    ``log_holds(entry_id)`` says whether the run's log still has that entry
    (LogTruncatedError if a run that exists does not).
    """
    check_batch(run_id, [wire(e) for e in events])
    if based_on is not None:
        check_based_on(run_id, based_on)
        if run_state != ABSENT and log_holds is not None and not log_holds(based_on):
            raise LogTruncatedError(run_id, based_on)
    plan = plan_batch(run_id, events, run_state, entity_state, stored_workflow)
    check_claims(run_id, events, plan, logged_fingerprint, token_owner)
    return plan


def check_claims(
    run_id: str,
    events: Sequence[NewEvent],
    plan: Sequence[Planned],
    logged_fingerprint: Callable[[str], str],
    token_owner: Callable[[str], str | None],
) -> None:
    """The fingerprint and token checks, earlier events of the batch included."""
    fingerprints: dict[str, str] = {}
    claimed: dict[str, str] = {}
    for event, verdict in zip(events, plan, strict=True):
        corr = event.corr
        if event.type is EventType.STEP_CREATED and verdict.write:
            fingerprints[corr] = event.fingerprint
        if event.type is EventType.STEP_STARTED and event.fingerprint:
            logged = fingerprints[corr] if corr in fingerprints else logged_fingerprint(corr)
            if logged and logged != event.fingerprint:
                raise StepMismatchError(
                    run_id, corr, fingerprint_difference(logged, event.fingerprint)
                )
        if verdict.write and event.type is EventType.HOOK_CREATED and event.token:
            mine = f"{run_id}|{corr}"
            owner = claimed.get(event.token) or token_owner(event.token)
            if owner is not None and owner != mine:
                raise token_conflict(event.token, owner, corr)
            claimed[event.token] = mine
