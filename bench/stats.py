"""The arithmetic of the figures: percentiles, ratios, and step times read from a run's log.

Latencies come from the run's own log (``Event.ts``, ms from the Redis clock),
so they are what the product recorded, not what the benchmark's client saw.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from ledgerflow.eventlog.events import Event, EventType

from bench.results import Integrity


def pct(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile; None for no data (JSON has no NaN)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, math.ceil(q / 100.0 * len(ordered)) - 1))
    return float(ordered[rank])


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or denominator == 0:
        return None
    return numerator / denominator


def fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


@dataclass
class StepTimes:
    """First step_created / step_started / step_completed ts of each step, in call order."""

    corrs: list[str] = field(default_factory=list)
    created: dict[str, int] = field(default_factory=dict)
    started: dict[str, int] = field(default_factory=dict)
    completed: dict[str, int] = field(default_factory=dict)
    starts: int = 0
    retries: int = 0
    failures: int = 0

    @classmethod
    def of(cls, events: Sequence[Event]) -> StepTimes:
        times = cls()
        for event in events:
            if event.type is EventType.STEP_CREATED:
                if event.corr not in times.created:
                    times.corrs.append(event.corr)
                times.created.setdefault(event.corr, event.ts)
            elif event.type is EventType.STEP_STARTED:
                times.starts += 1
                times.started.setdefault(event.corr, event.ts)
            elif event.type is EventType.STEP_COMPLETED:
                times.completed.setdefault(event.corr, event.ts)
            elif event.type is EventType.STEP_RETRYING:
                times.retries += 1
            elif event.type is EventType.STEP_FAILED:
                times.failures += 1
        return times

    def latencies(self, corrs: Sequence[str] | None = None) -> list[float]:
        """step_created -> step_completed, ms."""
        return [
            float(self.completed[c] - self.created[c])
            for c in (self.corrs if corrs is None else corrs)
            if c in self.completed
        ]

    def gaps(self, corrs: Sequence[str] | None = None) -> list[float]:
        """Previous step_completed -> this step_started, ms (sequential steps only)."""
        order = self.corrs
        wanted = set(order if corrs is None else corrs)
        out = []
        for prev, cur in itertools.pairwise(order):
            if cur in wanted and prev in self.completed and cur in self.started:
                out.append(float(self.started[cur] - self.completed[prev]))
        return out

    def hops(self) -> dict[str, list[float]]:
        """A sequential step's cycle split where the log can split it, ms.

        schedule: previous step_completed -> this step_created (worker's activation
        publish, scheduler consume, read, replay, append); dispatch: step_created ->
        step_started (step publish, worker consume, append); execute: step_started ->
        step_completed (run the step, append the outcome).
        """
        out: dict[str, list[float]] = {"schedule": [], "dispatch": [], "execute": []}
        for prev, cur in itertools.pairwise(self.corrs):
            if prev in self.completed and cur in self.started and cur in self.completed:
                out["schedule"].append(float(self.created[cur] - self.completed[prev]))
                out["dispatch"].append(float(self.started[cur] - self.created[cur]))
                out["execute"].append(float(self.completed[cur] - self.started[cur]))
        return out

    def cycles(self, corrs: Sequence[str] | None = None) -> list[float]:
        """Previous step_completed -> this step_completed, ms: the full per-step cost."""
        order = self.corrs
        wanted = set(order if corrs is None else corrs)
        return [
            float(self.completed[cur] - self.completed[prev])
            for prev, cur in itertools.pairwise(order)
            if cur in wanted and prev in self.completed and cur in self.completed
        ]


def run_span_ms(events: Sequence[Event]) -> float | None:
    """run_created -> run's terminal event, ms."""
    if not events:
        return None
    end = next((e for e in reversed(events) if e.type is EventType.RUN_COMPLETED), None)
    return None if end is None else float(end.ts - events[0].ts)


def integrity(times: StepTimes, expected_steps: int) -> Integrity:
    """Counts that must be boring: every step created and completed once, nothing retried."""
    return Integrity(
        steps_created=len(times.created),
        steps_completed=len(times.completed),
        expected_steps=expected_steps,
        extra_step_starts=times.starts - len(times.started),
        step_retries=times.retries,
        step_failures=times.failures,
    )


def merge(into: StepTimes, other: StepTimes, prefix: str) -> None:
    for corr in other.corrs:
        key = f"{prefix}/{corr}"
        into.corrs.append(key)
        into.created[key] = other.created[corr]
        if corr in other.started:
            into.started[key] = other.started[corr]
        if corr in other.completed:
            into.completed[key] = other.completed[corr]
    into.starts += other.starts
    into.retries += other.retries
    into.failures += other.failures


def cpu_per_step_ms(samples: Sequence[tuple[int, float]], lo: float, hi: float) -> float | None:
    """Scheduler CPU ms per step between the samples nearest ``lo`` and ``hi`` of the log."""
    if len(samples) < 3:
        return None
    total = samples[-1][0]
    start = min(samples, key=lambda s: abs(s[0] - lo * total))
    end = min(samples, key=lambda s: abs(s[0] - hi * total))
    steps = (end[0] - start[0]) / 3.0  # step_created, step_started, step_completed
    return (end[1] - start[1]) * 1000.0 / steps if steps > 0 else None
