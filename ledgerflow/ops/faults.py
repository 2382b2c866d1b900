"""Fault-injection points for the windows between two writes (off unless armed).

Each point names a window where a crash or a lost message leaves the log
saying something is missing; tests (or ``LEDGERFLOW_FAULTS=point[:times],...``
in a process's environment) arm them to prove the reconciler restores
progress. An unarmed check costs a dict lookup.
"""

from __future__ import annotations

import os
from collections import Counter
from typing import TypeVar

from .observer import Observer

T = TypeVar("T")

# The message that should follow is lost (never published).
WORKER_AFTER_STEP_COMPLETED = "worker.after_step_completed"  # activation lost
SCHEDULER_AFTER_STEP_CREATED = "scheduler.after_step_created"  # step messages lost
SCHEDULER_MID_BATCH = "scheduler.mid_batch"  # the second half of a batch's messages lost
# The process "dies" between a confirmed publish and the ack of what it handled.
SCHEDULER_AFTER_PUBLISH_BEFORE_ACK = "scheduler.after_publish_before_ack"
# lf.continue_as_new: the successor run exists, the old run's end is never written.
SCHEDULER_AFTER_CONTINUATION_STARTED = "scheduler.after_continuation_started"
# A schedule's tick started its run; the schedule is never advanced past it (its claim's
# lease runs out and another claimer finds the run there).
SCHEDULER_AFTER_SCHEDULE_RUN_STARTED = "scheduler.after_schedule_run_started"

POINTS = frozenset(
    {
        WORKER_AFTER_STEP_COMPLETED,
        SCHEDULER_AFTER_STEP_CREATED,
        SCHEDULER_MID_BATCH,
        SCHEDULER_AFTER_PUBLISH_BEFORE_ACK,
        SCHEDULER_AFTER_CONTINUATION_STARTED,
        SCHEDULER_AFTER_SCHEDULE_RUN_STARTED,
    }
)

_armed: Counter[str] = Counter()
fired: Counter[str] = Counter()


class InjectedCrash(BaseException):
    """Stands for the process dying at a fault point; escapes every `except Exception`."""


def arm(point: str, times: int = 1) -> None:
    if point not in POINTS:
        raise ValueError(f"unknown fault point {point!r} (known: {', '.join(sorted(POINTS))})")
    _armed[point] += times


def disarm_all() -> None:
    _armed.clear()
    fired.clear()


def hit(point: str) -> bool:
    """True (once per arming) when the fault at ``point`` should happen now."""
    if not _armed or _armed[point] <= 0:
        return False
    _armed[point] -= 1
    fired[point] += 1
    return True


class FaultObserver(Observer):
    """The fault points of the worker and the scheduler, as hooks: each fires once per arming."""

    def drop_activation(self, run_id: str) -> bool:
        return hit(WORKER_AFTER_STEP_COMPLETED)

    def before_dispatch(self, run_id: str, steps: list[T]) -> list[T]:
        if steps and hit(SCHEDULER_AFTER_STEP_CREATED):
            return []
        if len(steps) > 1 and hit(SCHEDULER_MID_BATCH):
            return steps[: len(steps) // 2]
        return steps

    def after_publish_steps(self, run_id: str) -> None:
        if hit(SCHEDULER_AFTER_PUBLISH_BEFORE_ACK):
            raise InjectedCrash(SCHEDULER_AFTER_PUBLISH_BEFORE_ACK)

    def after_continuation_started(self, run_id: str, successor: str) -> None:
        if hit(SCHEDULER_AFTER_CONTINUATION_STARTED):
            raise InjectedCrash(SCHEDULER_AFTER_CONTINUATION_STARTED)

    def after_schedule_run_started(self, schedule: str, run_id: str) -> None:
        if hit(SCHEDULER_AFTER_SCHEDULE_RUN_STARTED):
            raise InjectedCrash(SCHEDULER_AFTER_SCHEDULE_RUN_STARTED)


def _from_env() -> None:
    for item in filter(None, os.environ.get("LEDGERFLOW_FAULTS", "").split(",")):
        point, _, times = item.partition(":")
        arm(point.strip(), int(times) if times else 1)


_from_env()
