"""What the derived state of a run should be, computed from its stream alone.

The status hash, the active-runs index, the timer index, the hook-token index
and the retention indexes (finished / expire) are caches of the fold; this
module says what they must contain, so ``ledgerflow runs verify`` can report
where they disagree with the stream and ``ledgerflow runs repair`` can rewrite
them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from . import statushash as sh
from .errors import RepairRaceError
from .events import Event
from .fold import fold
from .kinds import HookStatus, StepStatus, WaitStatus
from .records import HookCreated, Record, RunCreated, StepCreated
from .store import EventStore, RemovalIndex
from .timers import Timer, TimerKind
from .transitions import STATE_AFTER


@dataclass
class Expected:
    """The derived state one run's stream implies."""

    status: dict[str, str]
    active: bool
    timers: list[tuple[Timer, int]] = field(default_factory=list)
    hooks: dict[str, str] = field(default_factory=dict)  # token -> "run|corr"
    # A finished run's retention-index entry (index, score); None while it is live.
    retention: tuple[RemovalIndex, int] | None = None


def expected_state(run_id: str, events: Sequence[Event]) -> Expected:
    status: dict[str, str] = {}
    for event in events:
        record = event.record
        attempt = event.attempt
        if attempt is not None:
            attempt = max(sh.entity_of(status, event.corr).attempt, attempt)
        change = sh.Written(
            type=event.type,
            corr=event.corr,
            to=STATE_AFTER[event.type],
            event_id=event.id,
            at=event.ts,
            attempt=attempt,
            workflow=(record.workflow or "") if isinstance(record, RunCreated) else "",
            fingerprint=record.call_fingerprint if isinstance(record, StepCreated) else "",
            token=_claimed_token(record),
            retention_ms=record.retention_ms if isinstance(record, RunCreated) else None,
        )
        sh.record_written(status, change, clock=False)
    state = fold(run_id, events)
    timers: list[tuple[Timer, int]] = []
    hooks: dict[str, str] = {}
    if not state.finished and state.status != "absent":
        for wait in state.waits.values():
            if wait.status == WaitStatus.CREATED:
                timers.append((Timer(TimerKind.WAIT, run_id, wait.id), wait.due))
        for step in state.steps.values():
            if step.status == StepStatus.RETRYING and step.retry_due is not None:
                timers.append(
                    (Timer(TimerKind.STEP_RETRY, run_id, step.id, step.attempt + 1), step.retry_due)
                )
        for hook in state.hooks.values():
            if hook.status == HookStatus.CREATED and hook.token and hook.conflict is None:
                hooks[hook.token] = f"{run_id}|{hook.id}"
    return Expected(
        status=status,
        active=not state.finished and bool(events),
        timers=timers,
        hooks=hooks,
        retention=retention_entry(status),
    )


def retention_entry(status: dict[str, str]) -> tuple[RemovalIndex, int] | None:
    """Where a finished run waits for removal, as the terminal append enters it."""
    ended = status.get(sh.ENDED)
    if ended is None:
        return None
    kept = status.get(sh.RETENTION)
    if kept is not None:
        return RemovalIndex.EXPIRE, int(ended) + int(kept)
    return RemovalIndex.FINISHED, int(ended)


def _claimed_token(record: Record) -> str:
    """The token a hook_created holds in the index: none for a conflicted hook."""
    if isinstance(record, HookCreated) and record.conflict is None:
        return record.token
    return ""


def compare_status(expected: dict[str, str], actual: dict[str, str]) -> list[str]:
    """Differences between the derived and the stored status hash, as readable lines."""
    problems = []
    for key in sorted(set(expected) | set(actual)):
        if key.startswith(sh.VOLATILE):
            continue
        want, have = expected.get(key), actual.get(key)
        if want != have:
            problems.append(f"status field {key!r}: stream says {want!r}, hash has {have!r}")
    return problems


async def verify_run(store: EventStore, run_id: str) -> list[str]:
    """Every way the run's derived state disagrees with its stream (empty: consistent)."""
    events = await store.read(run_id)
    if not events:
        return [f"run {run_id!r} has no stream"]
    expected = expected_state(run_id, events)
    problems = compare_status(expected.status, await store.status(run_id))
    if expected.active != await store.is_active(run_id):
        where = "missing from" if expected.active else "still in"
        problems.append(f"run is {where} the active-runs index")
    if sh.CREATED in expected.status and not await store.is_listed(run_id):
        problems.append("run is missing from the runs index")
    entry = await store.removal_entry(run_id)
    if entry != expected.retention:
        if expected.retention is None:
            problems.append(f"run is in the {entry[0] if entry else ''} retention index")
        else:
            index, score = expected.retention
            problems.append(
                f"run is not in the {index} retention index at {score} (found: {entry})"
            )
    armed = {timer.member for timer, _ in await store.pending_timers(run_id)}
    for timer, _due in expected.timers:
        if timer.member not in armed:
            problems.append(f"timer entry missing: {timer.member}")
    for token, owner in expected.hooks.items():
        found = await store.hook_owner(token)
        if found is None or "|".join(found) != owner:
            problems.append(f"hook token {token!r} not indexed to {owner}")
    return problems


async def repair_run(store: EventStore, run_id: str, *, attempts: int = 5) -> list[str]:
    """Rebuild the run's derived state from its stream; returns what was wrong."""
    for _ in range(attempts):
        problems = await verify_run(store, run_id)
        if not problems:
            return []
        events = await store.read(run_id)
        if not events:
            return problems
        if await store.rewrite_derived(run_id, expected_state(run_id, events), events[-1].id):
            return problems
    raise RepairRaceError(f"run {run_id!r} kept changing while it was being repaired")
