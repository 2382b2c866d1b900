"""The observers a worker or a scheduler gets unless it is given its own list.

Log context first, so that whatever the others log about a step carries its
fields; then metrics; then the fault points (inert unless armed).
"""

from __future__ import annotations

from .faults import FaultObserver
from .logs import StepLogContext
from .metrics import MetricsObserver
from .observer import Observer


def standard_observers() -> list[Observer]:
    return [StepLogContext(), MetricsObserver(), FaultObserver()]
