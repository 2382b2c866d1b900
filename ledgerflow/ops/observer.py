"""One interface for what watches the worker and the scheduler: metrics, log context, faults.

Modelled on dramatiq's middleware: ``Observer`` is a base class whose hooks do
nothing, and a service (``Worker``, ``Scheduler``) is given a list of them and
calls each hook at its point. The services' hot paths then say only what they
do (record a step, replay a run, publish its steps); what production wants
around that (Prometheus counters, log fields, fault points for recovery tests)
is one observer each, and a new concern is a new observer rather than another
inline call in every service.

Hooks run inline, in order, and what they raise propagates: an observer that
must not disturb the service (all of the shipped ones but the fault injector,
whose whole point is to disturb it) keeps its hooks cheap and total.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

from ledgerflow.eventlog.events import EventType

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class StepAttempt:
    """Which attempt of which step a worker is on: what its log lines and hooks carry."""

    run_id: str
    workflow: str
    step: str
    corr: str
    attempt: int

    def log_fields(self) -> dict[str, object]:
        """What every log line about a step attempt carries (the pid is added by the renderer)."""
        return {
            "run_id": self.run_id,
            "workflow": self.workflow,
            "step": self.step,
            "corr": self.corr,
            "attempt": self.attempt,
        }


class Observer:
    """Hooks into the worker and the scheduler; every one a no-op until overridden."""

    # --- the worker --------------------------------------------------------------------

    def before_step_call(self, attempt: StepAttempt) -> None:
        """The step's function is about to be called, in the task that will run it."""

    def after_step_call(self, attempt: StepAttempt) -> None:
        """The step's function returned or raised (same task as ``before_step_call``)."""

    def after_step_recorded(self, step: str, event: EventType, duration: float | None) -> None:
        """A step event was appended (not a duplicate), by a worker or the timer loop.

        ``duration`` is the attempt's wall time when the event ended an attempt the
        worker ran, else None.
        """

    def drop_activation(self, run_id: str) -> bool:
        """True to lose the activation a step's final outcome should send (a fault point)."""
        return False

    # --- the scheduler -----------------------------------------------------------------

    def after_replay(self, run_id: str, trigger_ms: int) -> None:
        """A run was replayed and its decision recorded and published.

        ``trigger_ms`` is when what the replay reacted to happened (the Redis
        timestamp of its newest event not written by a scheduler).
        """

    def after_step_held_back(self, step: str, why: str) -> None:
        """A step did not start yet: ``why`` is "concurrency" (parked for a slot) or "rate"
        (put off to its rate limit's turn)."""

    def before_dispatch(self, run_id: str, steps: list[T]) -> list[T]:
        """The step messages a decision created, before dispatch: returns the ones to send."""
        return steps

    def after_publish_steps(self, run_id: str) -> None:
        """A decision's step messages were published and confirmed; its activation is unacked."""

    def after_timer_fired(self, kind: str, late_ms: int) -> None:
        """The timer loop acted on a timer of ``kind``, ``late_ms`` after it was due."""

    def after_history_warning(self, run_id: str, workflow: str, events: int) -> None:
        """A run's log passed the history warning threshold (once per run per process)."""

    def after_history_limit(self, run_id: str, workflow: str, events: int) -> None:
        """A run's log passed the history limit: the scheduler failed the run."""

    def after_continuation_started(self, run_id: str, successor: str) -> None:
        """``lf.continue_as_new``: the successor exists; the old run's end is not written yet."""

    def after_schedule_run_started(self, schedule: str, run_id: str) -> None:
        """A schedule's tick started its run; the schedule is not yet advanced past the tick."""

    def after_schedule_ticks(self, schedule: str, outcome: str, count: int, late_ms: int) -> None:
        """A scheduler acted on ``count`` ticks of ``schedule`` (outcome: started,
        skipped_overlap, missed, conflict), the newest of them ``late_ms`` after it fell."""

    # --- the reconciler ----------------------------------------------------------------

    def after_recovery(self, run_id: str, entity: str, reason: str) -> None:
        """The reconciler (or a redrive) put something back: a step message, a timer..."""

    def after_run_skipped(self, run_id: str) -> None:
        """A sweep passed over a run whose log could not be read."""

    def after_sweep(self) -> None:
        """A reconciler sweep finished."""

    def after_run_removed(self, run_id: str, size_bytes: int) -> None:
        """The janitor removed a finished run past its retention (``size_bytes``: roughly)."""


class Observers(Observer):
    """The list a service was given, called as one: each hook goes to each observer in order."""

    def __init__(self, observers: Sequence[Observer]) -> None:
        self.observers = tuple(observers)

    def before_step_call(self, attempt: StepAttempt) -> None:
        for observer in self.observers:
            observer.before_step_call(attempt)

    def after_step_call(self, attempt: StepAttempt) -> None:
        # Reverse order, like unwinding: the first to bind is the last to unbind.
        for observer in reversed(self.observers):
            observer.after_step_call(attempt)

    def after_step_recorded(self, step: str, event: EventType, duration: float | None) -> None:
        for observer in self.observers:
            observer.after_step_recorded(step, event, duration)

    def drop_activation(self, run_id: str) -> bool:
        return any(observer.drop_activation(run_id) for observer in self.observers)

    def after_step_held_back(self, step: str, why: str) -> None:
        for observer in self.observers:
            observer.after_step_held_back(step, why)

    def after_replay(self, run_id: str, trigger_ms: int) -> None:
        for observer in self.observers:
            observer.after_replay(run_id, trigger_ms)

    def before_dispatch(self, run_id: str, steps: list[T]) -> list[T]:
        for observer in self.observers:
            steps = observer.before_dispatch(run_id, steps)
        return steps

    def after_publish_steps(self, run_id: str) -> None:
        for observer in self.observers:
            observer.after_publish_steps(run_id)

    def after_timer_fired(self, kind: str, late_ms: int) -> None:
        for observer in self.observers:
            observer.after_timer_fired(kind, late_ms)

    def after_history_warning(self, run_id: str, workflow: str, events: int) -> None:
        for observer in self.observers:
            observer.after_history_warning(run_id, workflow, events)

    def after_history_limit(self, run_id: str, workflow: str, events: int) -> None:
        for observer in self.observers:
            observer.after_history_limit(run_id, workflow, events)

    def after_continuation_started(self, run_id: str, successor: str) -> None:
        for observer in self.observers:
            observer.after_continuation_started(run_id, successor)

    def after_schedule_run_started(self, schedule: str, run_id: str) -> None:
        for observer in self.observers:
            observer.after_schedule_run_started(schedule, run_id)

    def after_schedule_ticks(self, schedule: str, outcome: str, count: int, late_ms: int) -> None:
        for observer in self.observers:
            observer.after_schedule_ticks(schedule, outcome, count, late_ms)

    def after_recovery(self, run_id: str, entity: str, reason: str) -> None:
        for observer in self.observers:
            observer.after_recovery(run_id, entity, reason)

    def after_run_skipped(self, run_id: str) -> None:
        for observer in self.observers:
            observer.after_run_skipped(run_id)

    def after_sweep(self) -> None:
        for observer in self.observers:
            observer.after_sweep()

    def after_run_removed(self, run_id: str, size_bytes: int) -> None:
        for observer in self.observers:
            observer.after_run_removed(run_id, size_bytes)
