"""ledgerflow: durable, event-sourced workflows for Python.

``import ledgerflow as lf``. This package only re-exports and wires; the
behaviour lives in eventlog/, broker/, worker/ and scheduler/.
"""

from eventlog.codec import serializable
from eventlog.errors import (
    ConfigurationError,
    FatalError,
    IllegalTransitionError,
    LedgerflowError,
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
    UnknownStepError,
    UnknownWorkflowError,
    WorkflowFailedError,
)
from eventlog.events import Event, EventType
from eventlog.fold import RunState, StepState
from scheduler import Client, RunHandle, embedded, now, random, uuid4, workflow
from worker import StepContext, step, step_context

__version__ = "0.1.0"

__all__ = [
    "Client",
    "ConfigurationError",
    "Event",
    "EventType",
    "FatalError",
    "IllegalTransitionError",
    "LedgerflowError",
    "NonDeterminismError",
    "PayloadTooLargeError",
    "ReplayDivergenceError",
    "ResultTimeoutError",
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
    "UnknownStepError",
    "UnknownWorkflowError",
    "WorkflowFailedError",
    "embedded",
    "now",
    "random",
    "serializable",
    "step",
    "step_context",
    "uuid4",
    "workflow",
]
