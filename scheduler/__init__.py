"""Layer 4: workflows, deterministic replay, activations, the client."""

from .client import Client, RunHandle
from .determinism import now, random, uuid4
from .embedded import embedded
from .registry import WorkflowDef, WorkflowFunction, WorkflowRegistry, workflow, workflows
from .replay import WorkflowInstance
from .service import Scheduler

__all__ = [
    "Client",
    "RunHandle",
    "Scheduler",
    "WorkflowDef",
    "WorkflowFunction",
    "WorkflowInstance",
    "WorkflowRegistry",
    "embedded",
    "now",
    "random",
    "uuid4",
    "workflow",
    "workflows",
]
