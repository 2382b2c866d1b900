"""Which workflow instance is running in this context (None outside workflow code)."""

from __future__ import annotations

import contextvars
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .replay import WorkflowInstance

current_instance: contextvars.ContextVar[WorkflowInstance | None] = contextvars.ContextVar(
    "ledgerflow_workflow_instance", default=None
)
