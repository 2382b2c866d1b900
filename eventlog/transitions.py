"""The legal transitions of every entity, written once.

The Redis store renders this table into its Lua script and the in-memory store
walks it in Python, so both stores enforce exactly the same model; the
conformance suite checks that they agree.

Outcomes: WRITE appends and moves to ``to``; DUP writes nothing and answers
"duplicate" (what makes redelivery harmless); ILLEGAL raises. A step rule may
carry an attempt guard: the event writes only if its attempt is ``>=`` (GE) or
``>`` (GT) the attempt recorded, and is a stale duplicate otherwise.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from .errors import (
    IllegalTransitionError,
    RunClosedError,
    RunNotFoundError,
    WorkflowMismatchError,
)
from .events import EventType, NewEvent
from .kinds import RUN_TERMINAL_STATES as RUN_TERMINAL_STATES
from .kinds import HookStatus, RunStatus, StepStatus, WaitStatus
from .statushash import EntityState


class Action(enum.StrEnum):
    WRITE = "w"
    DUP = "d"
    ILLEGAL = "i"


class Guard(enum.StrEnum):
    NONE = ""
    GE = "ge"
    GT = "gt"


@dataclass(frozen=True, slots=True)
class Rule:
    action: Action
    to: str = ""
    guard: Guard = Guard.NONE


ABSENT = ""

E = EventType
W, D = Action.WRITE, Action.DUP


def _w(to: str, guard: Guard = Guard.NONE) -> Rule:
    # Kept as the plain string the status hash stores, so it reads the same in errors.
    return Rule(W, str(to), guard)


_DUP = Rule(D)

# RUN: created -> started -> one terminal; created -> cancelled.
RUN_RULES: dict[str, dict[EventType, Rule]] = {
    ABSENT: {E.RUN_CREATED: _w(RunStatus.CREATED)},
    RunStatus.CREATED: {
        E.RUN_CREATED: _DUP,
        E.RUN_STARTED: _w(RunStatus.STARTED),
        E.RUN_CANCELLED: _w(RunStatus.CANCELLED),
    },
    RunStatus.STARTED: {
        E.RUN_CREATED: _DUP,
        E.RUN_STARTED: _DUP,
        E.RUN_COMPLETED: _w(RunStatus.COMPLETED),
        E.RUN_FAILED: _w(RunStatus.FAILED),
        E.RUN_CANCELLED: _w(RunStatus.CANCELLED),
    },
    RunStatus.COMPLETED: {E.RUN_CREATED: _DUP, E.RUN_STARTED: _DUP, E.RUN_COMPLETED: _DUP},
    RunStatus.FAILED: {E.RUN_CREATED: _DUP, E.RUN_STARTED: _DUP, E.RUN_FAILED: _DUP},
    RunStatus.CANCELLED: {E.RUN_CREATED: _DUP, E.RUN_STARTED: _DUP, E.RUN_CANCELLED: _DUP},
}

_STEP_DONE = {
    t: _DUP
    for t in (
        E.STEP_CREATED,
        E.STEP_STARTED,
        E.STEP_COMPLETED,
        E.STEP_FAILED,
        E.STEP_RETRYING,
    )
}

# STEP: created -> started -> completed / failed; started -> retrying -> started ...
# A repeated started is legal (at-least-once); a late outcome after the step
# ended is a duplicate, so a slow or redelivered worker can never record twice.
STEP_RULES: dict[str, dict[EventType, Rule]] = {
    ABSENT: {E.STEP_CREATED: _w(StepStatus.CREATED)},
    StepStatus.CREATED: {E.STEP_CREATED: _DUP, E.STEP_STARTED: _w(StepStatus.STARTED)},
    StepStatus.STARTED: {
        E.STEP_CREATED: _DUP,
        E.STEP_STARTED: _w(StepStatus.STARTED, Guard.GE),
        E.STEP_RETRYING: _w(StepStatus.RETRYING, Guard.GE),
        E.STEP_COMPLETED: _w(StepStatus.COMPLETED),
        E.STEP_FAILED: _w(StepStatus.FAILED, Guard.GE),
    },
    StepStatus.RETRYING: {
        E.STEP_CREATED: _DUP,
        E.STEP_STARTED: _w(StepStatus.STARTED, Guard.GT),
        E.STEP_RETRYING: _DUP,
        E.STEP_COMPLETED: _w(StepStatus.COMPLETED),
        E.STEP_FAILED: _DUP,
    },
    StepStatus.COMPLETED: _STEP_DONE,
    StepStatus.FAILED: _STEP_DONE,
}

WAIT_RULES: dict[str, dict[EventType, Rule]] = {
    ABSENT: {E.WAIT_CREATED: _w(WaitStatus.CREATED)},
    WaitStatus.CREATED: {E.WAIT_CREATED: _DUP, E.WAIT_COMPLETED: _w(WaitStatus.COMPLETED)},
    WaitStatus.COMPLETED: {E.WAIT_CREATED: _DUP, E.WAIT_COMPLETED: _DUP},
}

HOOK_RULES: dict[str, dict[EventType, Rule]] = {
    ABSENT: {E.HOOK_CREATED: _w(HookStatus.CREATED)},
    HookStatus.CREATED: {
        E.HOOK_CREATED: _DUP,
        E.HOOK_RECEIVED: _w(HookStatus.CREATED),
        E.HOOK_DISPOSED: _w(HookStatus.DISPOSED),
    },
    HookStatus.DISPOSED: {E.HOOK_CREATED: _DUP, E.HOOK_DISPOSED: _DUP},
}

RULES: dict[str, dict[str, dict[EventType, Rule]]] = {
    "run": RUN_RULES,
    "step": STEP_RULES,
    "wait": WAIT_RULES,
    "hook": HOOK_RULES,
}

_STATUS_ENUMS: dict[str, type[enum.StrEnum]] = {
    "run": RunStatus,
    "step": StepStatus,
    "wait": WaitStatus,
    "hook": HookStatus,
}


def _check_statuses() -> None:
    """Each status enum names exactly the states its table reaches, so neither drifts."""
    for kind, table in RULES.items():
        reached = {rule.to for rules in table.values() for rule in rules.values() if rule.to}
        states = set(table) - {ABSENT}
        named = set(_STATUS_ENUMS[kind])
        if named != states | reached:
            raise RuntimeError(f"{kind} statuses {sorted(named)} differ from the table's")


_check_statuses()

STATE_AFTER: dict[EventType, str] = {
    event_type: rule.to
    for table in RULES.values()
    for rules in table.values()
    for event_type, rule in rules.items()
    if rule.action is Action.WRITE
}
"""The state an entity is in after an event of each type is written (one per type)."""


@dataclass(frozen=True, slots=True)
class Planned:
    """The verdict on one event of a batch."""

    write: bool
    kind: str
    to: str
    attempt: int | None


def entity_label(kind: str, corr: str) -> str:
    return "run" if kind == "run" else f"{kind} {corr}"


def plan_batch(
    run_id: str,
    events: Sequence[NewEvent],
    run_state: str,
    entity_state: Callable[[str], EntityState],
    stored_workflow: str = "",
) -> list[Planned]:
    """Decide every event of a batch, or raise without anything being written.

    ``entity_state(corr)`` answers (kind, state, attempt) as stored before the
    batch; later events in the batch see the effect of earlier ones.
    """
    local: dict[str, EntityState] = {}
    verdicts: list[Planned] = []
    for event in events:
        kind = event.type.kind
        if kind == "run":
            if (
                event.type is EventType.RUN_CREATED
                and run_state != ABSENT
                and stored_workflow
                and event.workflow != stored_workflow
            ):
                raise WorkflowMismatchError(
                    f"run {run_id!r} already exists for workflow {stored_workflow!r}, "
                    f"not {event.workflow!r}"
                )
            rule = RUN_RULES.get(run_state, {}).get(event.type)
            if rule is None:
                if run_state == ABSENT:
                    raise RunNotFoundError(run_id)
                if run_state in RUN_TERMINAL_STATES:
                    raise RunClosedError(run_id, "run", run_state, event.type.value)
                raise IllegalTransitionError(run_id, "run", run_state, event.type.value)
            if rule.action is Action.WRITE:
                run_state = rule.to
            verdicts.append(Planned(rule.action is Action.WRITE, kind, rule.to, None))
            continue
        if run_state == ABSENT:
            raise RunNotFoundError(run_id)
        if run_state in RUN_TERMINAL_STATES:
            raise RunClosedError(run_id, "run", run_state, event.type.value)
        if run_state != RunStatus.STARTED:
            raise IllegalTransitionError(run_id, "run", run_state, event.type.value)
        stored_kind, state, attempt = local.get(event.corr) or entity_state(event.corr)
        label = entity_label(kind, event.corr)
        if state != ABSENT and stored_kind != kind:
            raise IllegalTransitionError(run_id, label, f"{stored_kind} {state}", event.type.value)
        rule = RULES[kind].get(state, {}).get(event.type)
        if rule is None or rule.action is Action.ILLEGAL:
            raise IllegalTransitionError(run_id, label, state or "absent", event.type.value)
        write = rule.action is Action.WRITE
        new_attempt = event.attempt if event.attempt is not None else 0
        if write and rule.guard is Guard.GE and new_attempt < attempt:
            write = False
        if write and rule.guard is Guard.GT and new_attempt <= attempt:
            write = False
        if write:
            local[event.corr] = EntityState(kind, rule.to, max(attempt, new_attempt))
        verdicts.append(Planned(write, kind, rule.to, max(attempt, new_attempt)))
    return verdicts


def lua_table() -> str:
    """Render RULES as a Lua table literal: T[kind][state][event] = {action, to, guard}."""

    def rules_of(table: dict[EventType, Rule]) -> Iterable[str]:
        for event_type, rule in table.items():
            triple = f'"{rule.action.value}","{rule.to}","{rule.guard.value}"'
            yield f'["{event_type.value}"]={{{triple}}}'

    kinds = []
    for kind, states in RULES.items():
        state_parts = [
            f'["{state}"]={{{",".join(rules_of(table))}}}' for state, table in states.items()
        ]
        kinds.append(f'["{kind}"]={{{",".join(state_parts)}}}')
    return "{" + ",".join(kinds) + "}"
