"""The vocabulary of the log: event types, entity statuses, and who writes what.

Kept apart from ``events`` (the entry and its decoding) so that the typed
records, the transition table and the status hash can all name an event type
or a status without importing each other.
"""

from __future__ import annotations

import enum


class EventType(enum.StrEnum):
    RUN_CREATED = "run_created"
    RUN_STARTED = "run_started"
    RUN_COMPLETED = "run_completed"
    RUN_FAILED = "run_failed"
    RUN_CANCELLED = "run_cancelled"
    STEP_CREATED = "step_created"
    STEP_STARTED = "step_started"
    STEP_COMPLETED = "step_completed"
    STEP_FAILED = "step_failed"
    STEP_RETRYING = "step_retrying"
    WAIT_CREATED = "wait_created"
    WAIT_COMPLETED = "wait_completed"
    HOOK_CREATED = "hook_created"
    HOOK_RECEIVED = "hook_received"
    HOOK_DISPOSED = "hook_disposed"

    @property
    def kind(self) -> str:
        """The entity this event belongs to: run, step, wait or hook."""
        return self.value.split("_", 1)[0]


class RunStatus(enum.StrEnum):
    """Where a run stands; the states of ``transitions.RUN_RULES`` (checked there)."""

    CREATED = "created"
    STARTED = "started"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


class StepStatus(enum.StrEnum):
    """The states of ``transitions.STEP_RULES``."""

    CREATED = "created"
    STARTED = "started"
    RETRYING = "retrying"
    COMPLETED = "completed"
    FAILED = "failed"


class WaitStatus(enum.StrEnum):
    """The states of ``transitions.WAIT_RULES``."""

    CREATED = "created"
    COMPLETED = "completed"


class HookStatus(enum.StrEnum):
    """The states of ``transitions.HOOK_RULES`` (a received payload leaves a hook created)."""

    CREATED = "created"
    DISPOSED = "disposed"


RUN_TERMINAL_STATES = frozenset({RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED})

E = EventType
RUN_TERMINAL = frozenset({E.RUN_COMPLETED, E.RUN_FAILED, E.RUN_CANCELLED})
STEP_OUTCOMES = frozenset({E.STEP_COMPLETED, E.STEP_FAILED, E.STEP_RETRYING})

SCHEDULER_WRITES = frozenset(
    {E.RUN_STARTED, E.STEP_CREATED, E.WAIT_CREATED, E.HOOK_CREATED, E.HOOK_DISPOSED}
)
"""Events a scheduler appends as the outcome of a replay (a decision).

Its other writes (a run's terminal, a child's outcome in its parent) end or
feed a run rather than answer an activation; the rest are written by
producers, workers and timers.
"""
AWAITS_SCHEDULER = frozenset(
    {E.RUN_CREATED, E.STEP_COMPLETED, E.STEP_FAILED, E.WAIT_COMPLETED, E.HOOK_RECEIVED}
)
"""Events that ask for a replay: a run not yet started, or an outcome the code has not seen.

A log whose newest such event is newer than the newest of ``SCHEDULER_WRITES``
holds an activation no scheduler has acted on yet.
"""
