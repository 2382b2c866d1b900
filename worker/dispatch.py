"""How a step call inside workflow code reaches the scheduler without an import.

Inside a workflow a step call does not run the step: it asks the dispatcher
bound to the current context. The scheduler implements this protocol, so the
worker layer never imports the scheduler layer.
"""

from __future__ import annotations

import contextvars
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from .registry import StepDef


class Dispatcher(Protocol):
    def call_step(
        self, step: StepDef, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Coroutine[Any, Any, Any]: ...


current_dispatcher: contextvars.ContextVar[Dispatcher | None] = contextvars.ContextVar(
    "ledgerflow_dispatcher", default=None
)
