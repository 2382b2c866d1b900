"""The layout of a run's status hash, written once for Python and Lua.

The status hash is a cache of the fold that the append script keeps in step
with the stream (see ``lua``): run-wide fields (``run``, ``wf``, ``created``,
``last``, ``n``, and for retention ``ret`` and ``end``) and per-entity fields
named by a one-letter prefix and the entity's correlation id. Every module that
reads or writes the hash names its fields through this one, and the Lua scripts
get the same names from ``lua_helpers()``, so the layout cannot drift between
the stores.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from typing import Final, NamedTuple

from .kinds import RUN_TERMINAL_STATES, EventType

RUN: Final = "run"
"""The run's status (``kinds.RunStatus``)."""
WORKFLOW: Final = "wf"
"""The workflow name run_created recorded."""
CREATED: Final = "created"
"""When run_created was appended (ms, Redis clock)."""
LAST: Final = "last"
"""The id of the newest entry."""
COUNT: Final = "n"
"""How many entries the stream holds."""
RETENTION: Final = "ret"
"""The run's own retention (ms), from run_created; absent: the namespace default applies."""
ENDED: Final = "end"
"""When the run became terminal (ms, Redis clock): the terminal event's timestamp."""

ENTITY: Final = "c:"
"""c:<corr> -> "<kind>.<state>" (step.started, wait.created, hook.disposed ...)."""
ATTEMPT: Final = "a:"
"""a:<corr> -> the highest attempt recorded for a step."""
CREATED_ID: Final = "x:"
"""x:<corr> -> the id of the step's step_created (a retry re-dispatches its arguments)."""
FINGERPRINT: Final = "f:"
"""f:<corr> -> the call fingerprint step_created recorded; step_started must match it."""
HEARTBEAT: Final = "h:"
"""h:<corr> -> when the step's current attempt last proved alive (ms, Redis clock)."""
TOKEN: Final = "k:"
"""k:<corr> -> the hook's token, so its disposal can drop the token index entry."""

SUMMARY: Final = (RUN, WORKFLOW, CREATED, LAST, COUNT, ENDED)
"""The fields a runs listing reads, in this order."""
VOLATILE: Final = (HEARTBEAT,)
"""Prefixes of fields stamped from the clock: present, but not derivable from the stream."""


def entity_field(corr: str) -> str:
    return ENTITY + corr


def attempt_field(corr: str) -> str:
    return ATTEMPT + corr


def created_id_field(corr: str) -> str:
    return CREATED_ID + corr


def fingerprint_field(corr: str) -> str:
    return FINGERPRINT + corr


def heartbeat_field(corr: str) -> str:
    return HEARTBEAT + corr


def token_field(corr: str) -> str:
    return TOKEN + corr


def entity_value(kind: str, state: str) -> str:
    return f"{kind}.{state}"


def split_entity(value: str) -> tuple[str, str]:
    """(kind, state) of an entity field's value; ("", "") for none."""
    kind, _, state = value.partition(".")
    return kind, state


class EntityState(NamedTuple):
    """One entity as the hash holds it: what the transition rules decide on."""

    kind: str  # step, wait or hook; "" while absent
    state: str  # "" while absent
    attempt: int  # the highest attempt recorded (0: none)


ABSENT_ENTITY = EntityState("", "", 0)


def entity_of(status: Mapping[str, str], corr: str) -> EntityState:
    """One entity as the hash holds it (``ABSENT_ENTITY`` if it has no field)."""
    raw = status.get(entity_field(corr))
    if raw is None:
        return ABSENT_ENTITY
    kind, state = split_entity(raw)
    return EntityState(kind, state, int(status.get(attempt_field(corr), "0")))


def entity_corrs(status: Mapping[str, str], value: str) -> list[str]:
    """The correlation ids of the entities whose entity field holds ``value``."""
    return [k[len(ENTITY) :] for k, v in status.items() if k.startswith(ENTITY) and v == value]


@dataclass(frozen=True, slots=True)
class Written:
    """One event as written: what it changes in its run's status hash."""

    type: EventType
    corr: str
    to: str  # the entity's (or the run's) state after it
    event_id: str
    at: int  # the append's clock reading (ms)
    attempt: int | None = None  # the entity's attempt after it; None if the event carries none
    workflow: str = ""  # run_created: the workflow's name
    fingerprint: str = ""  # step_created: the call fingerprint step_started must match
    token: str = ""  # hook_created: the token it holds (none for a conflicted hook)
    retention_ms: int | None = None  # run_created: the run's own retention, if it has one


def record_written(status: MutableMapping[str, str], w: Written, *, clock: bool = True) -> None:
    """Update ``status`` for one written event, as the append script does in Lua.

    ``clock=False`` leaves out the fields stamped from the clock (``VOLATILE``),
    for a hash derived from the stream alone.
    """
    if w.type.kind == "run":
        status[RUN] = w.to
        if w.type is EventType.RUN_CREATED:
            status[WORKFLOW] = w.workflow
            status[CREATED] = str(w.at)
            if w.retention_ms is not None:
                status[RETENTION] = str(w.retention_ms)
        if w.to in RUN_TERMINAL_STATES:
            status[ENDED] = str(w.at)
    else:
        status[entity_field(w.corr)] = entity_value(w.type.kind, w.to)
        if w.attempt is not None:
            status[attempt_field(w.corr)] = str(w.attempt)
        if w.type is EventType.STEP_CREATED:
            status[created_id_field(w.corr)] = w.event_id
            if w.fingerprint:
                status[fingerprint_field(w.corr)] = w.fingerprint
        if w.type is EventType.STEP_STARTED and clock:
            status[heartbeat_field(w.corr)] = str(w.at)
        if w.type is EventType.HOOK_CREATED and w.token:
            status[token_field(w.corr)] = w.token
    status[LAST] = w.event_id
    status[COUNT] = str(int(status.get(COUNT, "0")) + 1)


def lua_helpers() -> str:
    """The same layout as Lua: field-name functions the scripts call instead of literals."""
    functions = {
        "f_entity": ENTITY,
        "f_attempt": ATTEMPT,
        "f_created_id": CREATED_ID,
        "f_fingerprint": FINGERPRINT,
        "f_heartbeat": HEARTBEAT,
        "f_token": TOKEN,
    }
    lines = [
        f"local F_RUN, F_WF, F_CREATED, F_LAST, F_N = "
        f"'{RUN}', '{WORKFLOW}', '{CREATED}', '{LAST}', '{COUNT}'",
        f"local F_RET, F_END, P_TOKEN = '{RETENTION}', '{ENDED}', '{TOKEN}'",
        f"local VOLATILE = '{HEARTBEAT}'",
    ]
    lines += [
        f"local function {name}(corr) return '{prefix}' .. corr end"
        for name, prefix in functions.items()
    ]
    return "\n".join(lines) + "\n"
