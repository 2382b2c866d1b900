"""How long a run's log may grow: a warning threshold and a hard cap.

A workflow that loops forever (over a hook, a poller) without
``lf.continue_as_new`` grows its log without end, and every cache miss replays
all of it into a scheduler's memory. Past ``warn`` events the scheduler says so
once per run (a log line and ``ledgerflow_history_warnings``), while there is
time to deploy a continuation; past ``limit`` it fails the run with
``lf.HistoryLimitError`` instead of reading the log at all. The count is the
status hash's ``n`` field, so the check costs one field, never a read of the log.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass

import structlog
from ledgerflow.eventlog.errors import ConfigurationError

from ledgerflow.ops.observer import Observer

log = structlog.get_logger("ledgerflow.scheduler")

DEFAULT_WARN = 10_000
DEFAULT_LIMIT = 100_000
WARN_ENV = "LEDGERFLOW_HISTORY_WARN"
LIMIT_ENV = "LEDGERFLOW_HISTORY_LIMIT"
REMEMBERED = 100_000
"""Runs whose warning is remembered; an older one may be warned about once more."""


@dataclass(frozen=True, slots=True)
class HistoryLimits:
    """Event counts: a warning past ``warn``, the run failed past ``limit``."""

    warn: int = DEFAULT_WARN
    limit: int = DEFAULT_LIMIT

    def __post_init__(self) -> None:
        if self.warn < 1 or self.limit < 1:
            raise ConfigurationError(
                f"history limits must be positive (warn {self.warn}, limit {self.limit})"
            )

    @classmethod
    def from_env(cls, warn: int | None = None, limit: int | None = None) -> HistoryLimits:
        """Arguments first, then LEDGERFLOW_HISTORY_WARN / _LIMIT, then the defaults."""
        return cls(
            warn=warn if warn is not None else _env_int(WARN_ENV, DEFAULT_WARN),
            limit=limit if limit is not None else _env_int(LIMIT_ENV, DEFAULT_LIMIT),
        )

    def over_limit(self, events: int) -> bool:
        return events > self.limit


class HistoryWatch:
    """Warns once per run per process when a run's log passes the warning threshold."""

    def __init__(self, limits: HistoryLimits, observer: Observer) -> None:
        self.limits = limits
        self._observer = observer
        self._warned: OrderedDict[str, None] = OrderedDict()

    def observe(self, run_id: str, workflow: str, events: int) -> None:
        if events <= self.limits.warn or run_id in self._warned:
            return
        self._warned[run_id] = None
        while len(self._warned) > REMEMBERED:
            self._warned.popitem(last=False)
        log.warning(
            "run history is long; the workflow should call lf.continue_as_new",
            run_id=run_id,
            workflow=workflow,
            events=events,
            warn_at=self.limits.warn,
            limit=self.limits.limit,
        )
        self._observer.after_history_warning(run_id, workflow, events)

    def forget(self, run_id: str) -> None:
        """The run ended: its entry would only take room."""
        self._warned.pop(run_id, None)


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw.replace("_", ""))
    except ValueError:
        raise ConfigurationError(f"{name} must be a whole number of events, got {raw!r}") from None
    if value < 1:
        raise ConfigurationError(f"{name} must be positive, got {value}")
    return value
