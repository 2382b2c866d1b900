"""Layer 3: steps, their context, and the worker that runs them."""

from .context import StepContext, heartbeat, step_context
from .dispatch import Dispatcher, current_dispatcher
from .registry import StepDef, StepFunction, StepRegistry, step, steps
from .service import Worker

__all__ = [
    "Dispatcher",
    "StepContext",
    "StepDef",
    "StepFunction",
    "StepRegistry",
    "Worker",
    "current_dispatcher",
    "heartbeat",
    "step",
    "step_context",
    "steps",
]
