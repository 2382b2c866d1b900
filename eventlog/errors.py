"""The one error hierarchy of ledgerflow.

Every layer raises subclasses of :class:`LedgerflowError` so that callers can
catch "anything ledgerflow said" with one clause, and so that errors recorded
in a run's log can be reconstructed by type name on the other side of the wire.
It lives in the lowest layer because every other layer raises from it.
"""

from __future__ import annotations


class LedgerflowError(Exception):
    """Base of every error ledgerflow raises on purpose."""


PUBLIC_PREFIX = "ledgerflow."
# Where these classes were recorded from before: the module's earlier import paths.
_EARLIER_PREFIXES = ("eventlog.errors.", "ledgerflow.eventlog.errors.")


def error_type_name(kind: type) -> str:
    """The name an exception type is recorded under in a run's log.

    Builtins by bare name (``ValueError``); ledgerflow's own errors by their public
    name (``ledgerflow.FatalError``), so a log does not change meaning when this
    module moves; anything else module-qualified.
    """
    if kind.__module__ == "builtins":
        return kind.__qualname__
    if kind.__module__ == __name__:
        return PUBLIC_PREFIX + kind.__qualname__
    return f"{kind.__module__}.{kind.__qualname__}"


def canonical_error_name(name: str) -> str:
    """A recorded type name as ``error_type_name`` writes it today (older logs used paths)."""
    for prefix in _EARLIER_PREFIXES:
        if name.startswith(prefix):
            return PUBLIC_PREFIX + name[len(prefix) :]
    return name


# --- configuration and infrastructure -------------------------------------------------


class ConfigurationError(LedgerflowError):
    """A setting is missing or malformed (a URL, a namespace, an APP path)."""


class ServiceUnavailableError(LedgerflowError):
    """RabbitMQ or Redis could not be reached; the message says how to start it."""


class NotReplicatedError(ServiceUnavailableError):
    """An append is on the Redis master, but fewer copies than the durability setting asks
    for confirmed it in time. Retried like an outage (appends are idempotent); never
    reported as recorded (``eventlog/durability.py``)."""


class InvalidArgumentError(LedgerflowError, ValueError):
    """A value given to ledgerflow is outside what it can honour (a run id, a hook token, a delay).

    Raised where the value is passed in (inside workflow code too, where it can be
    caught), so a bad value never reaches a log, an index or a queue; the message
    says what is allowed.
    """


# --- payloads ---------------------------------------------------------------------------


class SerializationError(LedgerflowError, TypeError):
    """A value cannot be encoded or decoded; the message names where it sits."""


class PayloadTooLargeError(SerializationError):
    """An encoded payload is over the configured size limit."""


class BlobError(SerializationError):
    """A value stored out of line cannot be had: missing, of another run, over the value
    limit, or its bytes do not match the reference's checksum. Never wrong data."""


class NestingTooDeepError(SerializationError):
    """A value is nested deeper than ledgerflow carries (containers and rich values combined).

    Permanent, like a malformed payload: no deploy makes such bytes decodable.
    """


class UnknownTypeError(SerializationError):
    """A payload names a class this process may not rebuild.

    Not registered with ``@lf.serializable``, and not a dataclass or pydantic model
    of an allowed, already imported module. Unlike a malformed payload this is a
    deployment problem: the same bytes decode once the class is registered or its
    module allowed (``lf.allow_modules``), so they are parked, not failed.
    """


class MalformedMessageError(LedgerflowError):
    """A queue message could not be decoded into a known message type."""


# --- the event log ----------------------------------------------------------------------


class EventLogError(LedgerflowError):
    """Something about a run's event log."""


class RunNotFoundError(EventLogError):
    """No run_created is recorded for this run id."""

    def __init__(self, run_id: str) -> None:
        super().__init__(f"run {run_id!r} does not exist")
        self.run_id = run_id


class IllegalTransitionError(EventLogError):
    """An append would move an entity through a transition the model forbids."""

    def __init__(self, run_id: str, entity: str, current: str, event_type: str) -> None:
        super().__init__(
            f"illegal transition in run {run_id!r}: {entity} is {current!r}, "
            f"cannot record {event_type!r}"
        )
        self.run_id = run_id
        self.entity = entity
        self.current = current
        self.event_type = event_type


class RunClosedError(IllegalTransitionError):
    """The run already ended; nothing may be appended after its terminal event."""


class StreamClosedError(EventLogError):
    """A write to an output stream its writer has closed (``eventlog/outputs.py``)."""


class WorkflowMismatchError(EventLogError):
    """A run id was reused for a different workflow."""


class AppendArgumentError(EventLogError, ValueError):
    """The append refused a malformed argument before writing anything.

    Redis does not roll a script back, so the append script checks every argument
    of a batch before its first write; this names the event and the field.
    """

    def __init__(self, run_id: str, where: str, field: str, event_type: str, detail: str) -> None:
        kind = f" ({event_type})" if event_type else ""
        super().__init__(
            f"append to run {run_id!r} refused, nothing written: {where}{kind}, "
            f"field {field!r}: {detail}"
        )
        self.run_id = run_id
        self.where = where
        self.field = field
        self.event_type = event_type
        self.detail = detail


class LogTruncatedError(EventLogError):
    """The log no longer holds the entry a decision was based on; nothing was written.

    Redis replicates asynchronously: a master lost before its replica received its
    newest entries leaves a promoted replica with an older log. A scheduler that
    decided on those entries would record a decision the log's history does not
    support (a step whose predecessor never completed, as far as the log knows).
    The append refuses it; the scheduler replays the log as it now stands.
    """

    def __init__(self, run_id: str, based_on: str) -> None:
        super().__init__(
            f"run {run_id!r}: the log no longer holds entry {based_on!r}, which the "
            "decision being appended was based on (entries lost in a failover); "
            "nothing written, replay the log"
        )
        self.run_id = run_id
        self.based_on = based_on


class StepMismatchError(EventLogError):
    """A step message's name or arguments are not those its step_created recorded.

    A forged or corrupted message: the worker does not run it, and dead-letters it.
    """

    def __init__(self, run_id: str, corr: str, difference: str) -> None:
        super().__init__(
            f"step message for run {run_id!r} step {corr!r} does not match the logged "
            f"step_created: {difference}; the step is not run"
        )
        self.run_id = run_id
        self.corr = corr
        self.difference = difference


# --- registries -------------------------------------------------------------------------


class UnknownWorkflowError(LedgerflowError, LookupError):
    """No workflow of that name is registered in this process."""


class UnknownStepError(LedgerflowError, LookupError):
    """No step of that name is registered in this process."""


# --- workflow execution -----------------------------------------------------------------


class NonDeterminismError(LedgerflowError):
    """Workflow code did something that cannot be replayed (I/O, real timers, threads)."""


class WorkflowStalledError(NonDeterminismError):
    """Workflow code ran too long without awaiting (a busy loop, or heavy work outside steps).

    A scheduler runs many runs' workflow code on one thread: one that never yields
    would hold up every other run, so it is interrupted and the run fails with this.
    """


class ReplayDivergenceError(NonDeterminismError):
    """The workflow code and the recorded log disagree about what happens at a position."""

    def __init__(self, run_id: str, position: str, recorded: str, now: str) -> None:
        super().__init__(
            f"replay of run {run_id!r} diverged at {position}: the log recorded {recorded}, "
            f"the code now does {now}"
        )
        self.run_id = run_id
        self.position = position
        self.recorded = recorded
        self.now = now


class RemoteError(LedgerflowError):
    """An exception raised in another process, carried as type name, message and traceback."""

    def __init__(self, type_name: str, message: str, traceback_text: str = "") -> None:
        super().__init__(f"{type_name}: {message}")
        self.type_name = type_name
        self.message = message
        self.traceback_text = traceback_text


class StepFailedError(RemoteError):
    """A step exhausted its attempts; workflow code may catch this and carry on."""

    def __init__(
        self,
        step_name: str,
        type_name: str,
        message: str,
        traceback_text: str = "",
        attempts: int = 1,
    ) -> None:
        super().__init__(type_name, message, traceback_text)
        self.args = (
            f"step {step_name!r} failed after {attempts} attempt(s): {type_name}: {message}",
        )
        self.step_name = step_name
        self.attempts = attempts

    def __str__(self) -> str:
        return str(self.args[0])


class WorkflowFailedError(RemoteError):
    """The run ended in run_failed; raised by ``RunHandle.result()``."""


class WorkflowTimeoutError(WorkflowFailedError):
    """The run took longer than its workflow's ``timeout`` and was failed.

    Raised inside the workflow when its deadline passes (the run then fails with
    it) and by ``RunHandle.result()`` for such a run; a ``WorkflowFailedError``.
    """

    def __init__(self, message: str, traceback_text: str = "") -> None:
        super().__init__(PUBLIC_PREFIX + "WorkflowTimeoutError", message, traceback_text)
        self.args = (message,)

    def __str__(self) -> str:
        return str(self.args[0])


class RunCancelled(LedgerflowError):
    """The run was cancelled; raised by ``RunHandle.result()``."""


class ResultTimeoutError(LedgerflowError, TimeoutError):
    """``result(timeout=...)`` elapsed before the run ended."""


# --- step outcomes users raise ----------------------------------------------------------


class RetryableError(LedgerflowError):
    """Raised by a step to ask for a retry, optionally after an exact delay."""

    def __init__(self, message: str = "", retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ExitCalledError(LedgerflowError):
    """Step or workflow code called ``sys.exit()`` (raised SystemExit).

    In a ledgerflow process that would stop the worker or scheduler, and every
    redelivery would stop the next one: it is recorded as the code's failure instead.
    """

    def __init__(self, where: str, code: object) -> None:
        super().__init__(f"{where} called sys.exit({code!r}); recorded as a failure instead")
        self.code = code


class ResourceUnavailableError(LedgerflowError):
    """A step's resource (``@lf.resource``) could not be opened; the attempt fails, retried."""


class FatalError(LedgerflowError):
    """Raised by a step that must not be retried."""


# --- the message broker -----------------------------------------------------------------


class BrokerError(LedgerflowError):
    """RabbitMQ (or the in-memory broker) refused or failed an operation."""


class PublishError(BrokerError):
    """A message was not confirmed: unroutable, nacked, or the channel went away first."""


class StepTimeoutError(LedgerflowError):
    """A step ran past its ``timeout`` (start to close); recorded as a retryable failure."""


class HeartbeatTimeoutError(StepTimeoutError):
    """A step with ``heartbeat_timeout`` stopped calling ``lf.heartbeat()``."""


class WorkerLostError(LedgerflowError):
    """The worker running a step vanished (killed, partitioned) before recording an outcome."""


# --- durable waiting and control --------------------------------------------------------


class HookTokenConflictError(EventLogError):
    """Another live hook already uses this token; tokens are unique among live hooks.

    The store raises it for the append that would have claimed the token (``corr``
    names that hook, ``owner_run`` the run holding the token); the scheduler then
    records the hook as conflicted instead of failing the run.
    """

    def __init__(
        self, message: str, *, token: str = "", owner_run: str = "", corr: str = ""
    ) -> None:
        super().__init__(message)
        self.token = token
        self.owner_run = owner_run
        self.corr = corr


class HookConflictError(HookTokenConflictError):
    """Raised in the workflow when it awaits or iterates a hook whose token was taken.

    The hook was recorded as created-and-conflicted and is never live; the workflow
    may catch this and carry on (pick another token, say).
    """


class HookDisposedError(LedgerflowError):
    """Workflow code awaited a hook it had disposed (``hook.dispose()``, ``async with``)."""


class HookNotFoundError(LedgerflowError, LookupError):
    """No live hook has this token (never created, or disposed because its run ended)."""


class WaitTimeout(LedgerflowError, TimeoutError):
    """``lf.wait_for`` reached its durable timeout before the awaited thing happened."""


class ChildRunIdTakenError(LedgerflowError):
    """A child workflow's run id (``<parent>.s3``) was already taken by a run that is not it."""


class ChildWorkflowError(RemoteError):
    """A child workflow ended in failure; raised in the parent where it was awaited."""


class RepairRaceError(EventLogError):
    """A run's stream kept moving while its derived state was being rebuilt; try again."""


# --- history limits -------------------------------------------------------------------


class HistoryLimitError(LedgerflowError):
    """A run's log passed the history limit (``--history-limit``): the scheduler failed it.

    Replaying a log without end would exhaust a scheduler's memory; a workflow that
    loops forever should call ``lf.continue_as_new`` well before the limit.
    """


class ContinuationRunIdTakenError(LedgerflowError):
    """``lf.continue_as_new``'s next run id is taken by a run that does not continue this one."""


# --- AI agents (ledgerflow.ai) ------------------------------------------------------------


class ModelError(LedgerflowError):
    """A model call failed: the API could not be reached, or it answered with something
    that is not a reply (malformed, oversized, of the wrong shape). The model step is
    retried by its policy: another attempt may well get a good answer."""


class ModelUnavailableError(ModelError, RetryableError):
    """The model API is overloaded or down (HTTP 408, 409, 429, 5xx, a broken connection):
    retried, after the server's ``Retry-After`` when it sent a usable one."""


class ModelRefusedError(ModelError, FatalError):
    """The model API refused the request for good (a bad key, an unknown model, a request
    it cannot serve), or a scripted model ran out of script: never retried."""


class MaxTurnsError(LedgerflowError):
    """An agent reached its ``max_turns`` model calls without a final answer."""


# --- schedules ------------------------------------------------------------------------


class ScheduleNotFoundError(LedgerflowError, LookupError):
    """No schedule has this name in the namespace (never added, or deleted)."""


class ScheduleExistsError(LedgerflowError):
    """A schedule with this name exists already: delete it first, or replace it."""
