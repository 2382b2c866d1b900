"""ledgerflow: durable, event-sourced workflows for Python.

``import ledgerflow as lf``. This package only re-exports and wires; the
behaviour lives in its subpackages ``ledgerflow.eventlog``, ``.broker``,
``.worker`` and ``.scheduler`` (the folders eventlog/, broker/, worker/ and
scheduler/ of the repository).
"""

import os as _os

# In a checkout the layers' folders sit beside this one; an installed ledgerflow has
# them inside it (pyproject's package-dir). Imported straight from a checkout (its
# root first on sys.path: the test suite, `python -m examples.demo`), look beside it
# too, so both layouts import the same `ledgerflow.<layer>` names.
_checkout = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
if _os.path.isfile(_os.path.join(_checkout, "pyproject.toml")) and not _os.path.isdir(
    _os.path.join(_os.path.dirname(_os.path.abspath(__file__)), "eventlog")
):
    __path__.append(_checkout)

from ledgerflow.eventlog.codec import allow_modules, serializable
from ledgerflow.eventlog.errors import (
    BlobError,
    ChildWorkflowError,
    ConfigurationError,
    ExitCalledError,
    FatalError,
    HeartbeatTimeoutError,
    HistoryLimitError,
    HookConflictError,
    HookDisposedError,
    HookNotFoundError,
    HookTokenConflictError,
    IllegalTransitionError,
    InvalidArgumentError,
    LedgerflowError,
    MaxTurnsError,
    ModelError,
    ModelRefusedError,
    ModelUnavailableError,
    NestingTooDeepError,
    NonDeterminismError,
    NotReplicatedError,
    PayloadTooLargeError,
    ReplayDivergenceError,
    ResourceUnavailableError,
    ResultTimeoutError,
    RetryableError,
    RunCancelled,
    RunClosedError,
    RunNotFoundError,
    ScheduleExistsError,
    ScheduleNotFoundError,
    SerializationError,
    ServiceUnavailableError,
    StepFailedError,
    StepTimeoutError,
    StreamClosedError,
    UnknownStepError,
    UnknownTypeError,
    UnknownWorkflowError,
    WaitTimeout,
    WorkerLostError,
    WorkflowFailedError,
    WorkflowStalledError,
    WorkflowTimeoutError,
)
from ledgerflow.eventlog.events import Event, EventType
from ledgerflow.eventlog.fold import RunState, StepState
from ledgerflow.eventlog.outputs import Chunk
from ledgerflow.scheduler import Client, RunHandle, embedded, now, random, uuid4, workflow
from ledgerflow.scheduler.continuation import continue_as_new
from ledgerflow.scheduler.durable import (
    create_hook,
    create_webhook,
    sleep,
    sleep_until,
    wait_for,
)
from ledgerflow.scheduler.replay import Hook, Webhook
from ledgerflow.scheduler.schedules import schedule
from ledgerflow.worker import StepContext, heartbeat, step, step_context
from ledgerflow.worker.concurrency import Concurrency
from ledgerflow.worker.ratelimit import RateLimit
from ledgerflow.worker.registry import set_default_retry
from ledgerflow.worker.resources import resource, use
from ledgerflow.worker.retry import RetryPolicy
from ledgerflow.worker.streams import StreamWriter, stream

from . import ai, testing

__version__ = "0.1.0"

__all__ = [
    "BlobError",
    "ChildWorkflowError",
    "Chunk",
    "Client",
    "Concurrency",
    "ConfigurationError",
    "Event",
    "EventType",
    "ExitCalledError",
    "FatalError",
    "HeartbeatTimeoutError",
    "HistoryLimitError",
    "Hook",
    "HookConflictError",
    "HookDisposedError",
    "HookNotFoundError",
    "HookTokenConflictError",
    "IllegalTransitionError",
    "InvalidArgumentError",
    "LedgerflowError",
    "MaxTurnsError",
    "ModelError",
    "ModelRefusedError",
    "ModelUnavailableError",
    "NestingTooDeepError",
    "NonDeterminismError",
    "NotReplicatedError",
    "PayloadTooLargeError",
    "RateLimit",
    "ReplayDivergenceError",
    "ResourceUnavailableError",
    "ResultTimeoutError",
    "RetryPolicy",
    "RetryableError",
    "RunCancelled",
    "RunClosedError",
    "RunHandle",
    "RunNotFoundError",
    "RunState",
    "ScheduleExistsError",
    "ScheduleNotFoundError",
    "SerializationError",
    "ServiceUnavailableError",
    "StepContext",
    "StepFailedError",
    "StepState",
    "StepTimeoutError",
    "StreamClosedError",
    "StreamWriter",
    "UnknownStepError",
    "UnknownTypeError",
    "UnknownWorkflowError",
    "WaitTimeout",
    "Webhook",
    "WorkerLostError",
    "WorkflowFailedError",
    "WorkflowStalledError",
    "WorkflowTimeoutError",
    "ai",
    "allow_modules",
    "continue_as_new",
    "create_hook",
    "create_webhook",
    "embedded",
    "heartbeat",
    "now",
    "random",
    "resource",
    "schedule",
    "serializable",
    "set_default_retry",
    "sleep",
    "sleep_until",
    "step",
    "step_context",
    "stream",
    "testing",
    "use",
    "uuid4",
    "wait_for",
    "workflow",
]
