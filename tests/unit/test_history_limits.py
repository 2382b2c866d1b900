"""History limits: where they come from, and a warning once per run per process."""

from __future__ import annotations

import pytest
from ledgerflow.eventlog.errors import ConfigurationError
from ledgerflow.scheduler.historylimits import (
    DEFAULT_LIMIT,
    DEFAULT_WARN,
    LIMIT_ENV,
    WARN_ENV,
    HistoryLimits,
    HistoryWatch,
)

from ledgerflow.ops.observer import Observer


class Seen(Observer):
    def __init__(self) -> None:
        self.warnings: list[tuple[str, str, int]] = []

    def after_history_warning(self, run_id: str, workflow: str, events: int) -> None:
        self.warnings.append((run_id, workflow, events))


def test_arguments_come_before_the_environment_before_the_defaults(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(WARN_ENV, raising=False)
    monkeypatch.delenv(LIMIT_ENV, raising=False)
    assert HistoryLimits.from_env() == HistoryLimits(DEFAULT_WARN, DEFAULT_LIMIT)
    monkeypatch.setenv(WARN_ENV, "50")
    monkeypatch.setenv(LIMIT_ENV, "1_000")
    assert HistoryLimits.from_env() == HistoryLimits(50, 1000)
    assert HistoryLimits.from_env(7, None) == HistoryLimits(7, 1000)


@pytest.mark.parametrize("value", ["lots", "0", "-5"])
def test_a_bad_environment_value_is_a_configuration_error(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv(LIMIT_ENV, value)
    with pytest.raises(ConfigurationError, match=LIMIT_ENV):
        HistoryLimits.from_env()


def test_the_limit_is_passed_only_beyond_it() -> None:
    limits = HistoryLimits(warn=5, limit=10)
    assert not limits.over_limit(10)
    assert limits.over_limit(11)


def test_a_run_is_warned_about_once_until_it_ends() -> None:
    seen = Seen()
    watch = HistoryWatch(HistoryLimits(warn=5, limit=10), seen)
    for count in (3, 5, 6, 7, 9):
        watch.observe("r1", "wf", count)
    watch.observe("r2", "wf", 8)
    assert seen.warnings == [("r1", "wf", 6), ("r2", "wf", 8)]
    watch.forget("r1")
    watch.observe("r1", "wf", 6)
    assert len(seen.warnings) == 3
