"""ledgerflow: durable, event-sourced workflows for Python.

``import ledgerflow as lf``. This package only re-exports and wires; the
behaviour lives in eventlog/, broker/, worker/ and scheduler/.
"""

from eventlog.codec import allow_modules, serializable
from eventlog.errors import (
    ChildWorkflowError,
    ConfigurationError,
    ExitCalledError,
    FatalError,
    HeartbeatTimeoutError,
    HookConflictError,
    HookNotFoundError,
    HookTokenConflictError,
    IllegalTransitionError,
    InvalidArgumentError,
    LedgerflowError,
    NestingTooDeepError,
    NonDeterminismError,
    PayloadTooLargeError,
    ReplayDivergenceError,
    ResultTimeoutError,
    RetryableError,
    RunCancelled,
    RunClosedError,
    RunNotFoundError,
    SerializationError,
    ServiceUnavailableError,
    StepFailedError,
    StepTimeoutError,
    UnknownStepError,
    UnknownTypeError,
    UnknownWorkflowError,
    WaitTimeout,
    WorkerLostError,
    WorkflowFailedError,
    WorkflowStalledError,
)
from eventlog.events import Event, EventType
from eventlog.fold import RunState, StepState
from scheduler import Client, RunHandle, embedded, now, random, uuid4, workflow
from scheduler.durable import create_hook, sleep, wait_for
from scheduler.replay import Hook
from worker import StepContext, heartbeat, step, step_context
from worker.registry import set_default_retry
from worker.retry import RetryPolicy

from . import testing

__version__ = "0.1.0"

__all__ = [
    "ChildWorkflowError",
    "Client",
    "ConfigurationError",
    "Event",
    "EventType",
    "ExitCalledError",
    "FatalError",
    "HeartbeatTimeoutError",
    "Hook",
    "HookConflictError",
    "HookNotFoundError",
    "HookTokenConflictError",
    "IllegalTransitionError",
    "InvalidArgumentError",
    "LedgerflowError",
    "NestingTooDeepError",
    "NonDeterminismError",
    "PayloadTooLargeError",
    "ReplayDivergenceError",
    "ResultTimeoutError",
    "RetryPolicy",
    "RetryableError",
    "RunCancelled",
    "RunClosedError",
    "RunHandle",
    "RunNotFoundError",
    "RunState",
    "SerializationError",
    "ServiceUnavailableError",
    "StepContext",
    "StepFailedError",
    "StepState",
    "StepTimeoutError",
    "UnknownStepError",
    "UnknownTypeError",
    "UnknownWorkflowError",
    "WaitTimeout",
    "WorkerLostError",
    "WorkflowFailedError",
    "WorkflowStalledError",
    "allow_modules",
    "create_hook",
    "embedded",
    "heartbeat",
    "now",
    "random",
    "serializable",
    "set_default_retry",
    "sleep",
    "step",
    "step_context",
    "testing",
    "uuid4",
    "wait_for",
    "workflow",
]
