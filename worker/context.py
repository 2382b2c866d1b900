"""The step context: who is running, for the step code that needs to know.

``idempotency_key`` is stable across attempts of one step, so users can pass
it to payment APIs and the like and a retried step cannot charge twice.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable
from dataclasses import dataclass, field

from ledgerflow.eventlog.errors import LedgerflowError
from ledgerflow.eventlog.outputs import OutputStreams


@dataclass(frozen=True, slots=True)
class StepContext:
    run_id: str
    step_id: str
    step_name: str
    attempt: int
    on_heartbeat: Callable[[], None] | None = field(default=None, repr=False, compare=False)
    cancel_requested: Callable[[], bool] | None = field(default=None, repr=False, compare=False)
    outputs: OutputStreams | None = field(default=None, repr=False, compare=False)
    """Where ``lf.stream`` writes (the worker's event store)."""
    _writes: dict[str, int] = field(default_factory=dict, repr=False, compare=False)

    def next_write(self, stream: str) -> int:
        """This attempt's next write number to ``stream`` (1, 2, ...), over all its writers.

        Numbered per attempt, not per writer, so a second ``lf.stream`` block of the
        same attempt is not taken for a repeat of the first one's writes.
        """
        self._writes[stream] = self._writes.get(stream, 0) + 1
        return self._writes[stream]

    @property
    def cancelled(self) -> bool:
        """True once the run was cancelled: finish or stop early, the outcome is not needed."""
        return bool(self.cancel_requested and self.cancel_requested())

    @property
    def idempotency_key(self) -> str:
        return f"{self.run_id}:{self.step_id}"


_current: contextvars.ContextVar[StepContext | None] = contextvars.ContextVar(
    "ledgerflow_step_context", default=None
)


def current_step_context() -> StepContext | None:
    """The running step's context, or None outside a step."""
    return _current.get()


def step_context() -> StepContext:
    """The context of the step running in this task; an error outside a step."""
    ctx = _current.get()
    if ctx is None:
        raise LedgerflowError("lf.step_context() was called outside a running step")
    return ctx


def bind_step_context(ctx: StepContext) -> contextvars.Token[StepContext | None]:
    return _current.set(ctx)


def reset_step_context(token: contextvars.Token[StepContext | None]) -> None:
    _current.reset(token)


def heartbeat() -> None:
    """Tell the worker (and, throttled, the log's watchers) that this step is alive.

    Cheap enough to call in a tight loop: the Redis write is rate-limited.
    """
    ctx = step_context()
    if ctx.on_heartbeat is not None:
        ctx.on_heartbeat()
