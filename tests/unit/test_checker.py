"""The log checker: clean logs pass, and each kind of defect is reported by event id.

Logs are built by hand so every defect is one the store would have refused:
the checker exists to notice if one ever slips through.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import pytest
from ledgerflow.eventlog.events import Event, EventType

from ledgerflow.ops.checker import check_log

E = EventType


class Log:
    """Builds an Event list with increasing ids and timestamps."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self._ids: Iterator[int] = itertools.count(1)

    def add(self, type: EventType, corr: str = "", **data: Any) -> Log:
        n = next(self._ids)
        self.events.append(Event(id=f"{n}-0", type=type, corr=corr, data=data, ts=1000 + n))
        return self

    def step(self, corr: str, *attempts: int, outcome: EventType = E.STEP_COMPLETED) -> Log:
        """created, then started at each attempt, then the outcome at the last one."""
        self.add(E.STEP_CREATED, corr, name="add", queue="default")
        for attempt in attempts:
            self.add(E.STEP_STARTED, corr, attempt=attempt)
        return self.add(outcome, corr, attempt=attempts[-1], result=1)


def started() -> Log:
    return Log().add(E.RUN_CREATED, workflow="wf", args=[], kwargs={}).add(E.RUN_STARTED)


def test_a_clean_log_passes() -> None:
    log = started().step("s1", 1).step("s2", 1).add(E.RUN_COMPLETED, result=2)
    assert check_log(log.events) == []


def test_an_unfinished_log_passes() -> None:
    assert check_log(started().step("s1", 1).add(E.STEP_CREATED, "s2").events) == []


def test_at_least_once_starts_retries_waits_and_hooks_pass() -> None:
    log = (
        started()
        # a redelivery: started twice at the same attempt, then at the next one
        .add(E.STEP_CREATED, "s1", name="add")
        .add(E.STEP_STARTED, "s1", attempt=1)
        .add(E.STEP_STARTED, "s1", attempt=1)
        .add(E.STEP_STARTED, "s1", attempt=2)
        .add(E.STEP_RETRYING, "s1", attempt=2, delay_ms=100)
        .add(E.STEP_STARTED, "s1", attempt=3)
        .add(E.STEP_COMPLETED, "s1", attempt=3, result=1)
        .add(E.WAIT_CREATED, "s2", due=5000)
        .add(E.WAIT_COMPLETED, "s2")
        .add(E.HOOK_CREATED, "s3", token="t")
        .add(E.HOOK_RECEIVED, "s3", payload=1)
        .add(E.HOOK_RECEIVED, "s3", payload=2)
        .add(E.HOOK_DISPOSED, "s3")
        .add(E.RUN_COMPLETED, result=None)
    )
    assert check_log(log.events) == []


def test_a_failed_step_and_a_cancelled_run_pass() -> None:
    log = started().step("s1", 1, outcome=E.STEP_FAILED).add(E.RUN_FAILED, error={})
    assert check_log(log.events) == []
    cancelled = Log().add(E.RUN_CREATED, workflow="wf").add(E.RUN_CANCELLED, reason="no")
    assert check_log(cancelled.events) == []


def test_an_empty_log_is_reported() -> None:
    assert check_log([]) == ["the log is empty: no run_created"]


def test_a_log_not_starting_with_run_created_is_reported() -> None:
    log = Log().add(E.RUN_STARTED).add(E.STEP_CREATED, "s1")
    problems = check_log(log.events)
    assert problems[0].startswith("the log does not start with run_created: event 1-0")
    assert "2 event(s) could not be checked" in problems[1]


def test_an_illegal_transition_names_event_entity_and_states() -> None:
    log = started().add(E.STEP_CREATED, "s1").add(E.STEP_COMPLETED, "s1", attempt=1)
    assert check_log(log.events) == [
        "event 4-0: illegal transition: step s1 is 'created', cannot record 'step_completed'"
    ]


def test_an_outcome_for_a_step_never_created_is_illegal() -> None:
    (problem,) = check_log(started().add(E.STEP_STARTED, "s9", attempt=1).events)
    assert "event 3-0" in problem
    assert "step s9 is 'absent'" in problem


def test_steps_before_run_started_are_illegal() -> None:
    log = Log().add(E.RUN_CREATED, workflow="wf").add(E.STEP_CREATED, "s1")
    (problem,) = check_log(log.events)
    assert "event 2-0: illegal transition: run is 'created'" in problem


@pytest.mark.parametrize("second", [E.STEP_COMPLETED, E.STEP_FAILED])
def test_a_second_terminal_for_a_step_is_reported(second: EventType) -> None:
    log = started().step("s1", 1).add(second, "s1", attempt=1).add(E.RUN_COMPLETED)
    (problem,) = check_log(log.events)
    assert problem == (
        f"event 6-0: a second terminal for step s1: {second.value} after step_completed (event 5-0)"
    )


def test_a_second_wait_completion_is_reported() -> None:
    log = started().add(E.WAIT_CREATED, "s1").add(E.WAIT_COMPLETED, "s1")
    (problem,) = check_log(log.add(E.WAIT_COMPLETED, "s1").events)
    assert problem.startswith("event 5-0: a second terminal for wait s1")


@pytest.mark.parametrize("second", [E.RUN_COMPLETED, E.RUN_FAILED, E.RUN_CANCELLED])
def test_a_second_terminal_for_the_run_is_reported(second: EventType) -> None:
    log = started().add(E.RUN_COMPLETED).add(second)
    assert check_log(log.events) == [
        f"event 4-0: a second terminal for the run: {second.value} after run_completed (event 3-0)"
    ]


def test_every_event_after_the_run_ended_is_reported() -> None:
    log = started().add(E.STEP_CREATED, "s1").add(E.RUN_FAILED)
    log.add(E.STEP_STARTED, "s1", attempt=1).add(E.STEP_COMPLETED, "s1", attempt=1)
    problems = check_log(log.events)
    assert problems == [
        "event 5-0: step_started for step s1 after the run ended with run_failed (event 4-0)",
        "event 6-0: step_completed for step s1 after the run ended with run_failed (event 4-0)",
    ]


def test_a_stale_attempt_is_reported() -> None:
    log = started().add(E.STEP_CREATED, "s1").add(E.STEP_STARTED, "s1", attempt=2)
    (problem,) = check_log(log.add(E.STEP_STARTED, "s1", attempt=1).events)
    assert "event 5-0: a stale step_started for step s1: attempt 1, but attempt 2" in problem


def test_a_repeated_run_created_is_reported() -> None:
    log = started().add(E.RUN_CREATED, workflow="wf")
    (problem,) = check_log(log.events)
    assert problem.startswith("event 3-0: a repeated run_created")


def test_a_hook_left_live_at_the_run_end_is_reported() -> None:
    log = started().add(E.HOOK_CREATED, "s1", token="t").add(E.RUN_COMPLETED)
    assert check_log(log.events) == ["event 4-0: the run ended with live hooks: s1"]


def test_hook_received_after_disposal_is_illegal() -> None:
    log = started().add(E.HOOK_CREATED, "s1").add(E.HOOK_DISPOSED, "s1")
    (problem,) = check_log(log.add(E.HOOK_RECEIVED, "s1").events)
    assert "hook s1 is 'disposed', cannot record 'hook_received'" in problem


def test_every_problem_is_reported_not_just_the_first() -> None:
    log = started().step("s1", 1).add(E.STEP_COMPLETED, "s1", attempt=1)
    log.add(E.STEP_COMPLETED, "s2", attempt=1).add(E.RUN_COMPLETED).add(E.RUN_COMPLETED)
    assert len(check_log(log.events)) == 3
