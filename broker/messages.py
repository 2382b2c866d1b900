"""The messages that travel through the broker (a step, a batch of steps, an activation).

Queue messages are derived data (the run's stream is the truth), so they carry
only what a consumer needs to find its place in the log: ids, a step name, an
attempt number and the already-encoded arguments as an opaque blob. They are
plain msgpack maps rather than the eventlog codec because they hold nothing but
primitives, and a map with a version and a kind lets an older or newer process
reject what it does not understand with a clear error instead of guessing.
Never pickle: a queue is an input from the network.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final, TypeVar

import msgpack
from ledgerflow.eventlog.codec import brief
from ledgerflow.eventlog.errors import (
    ConfigurationError,
    InvalidArgumentError,
    MalformedMessageError,
)
from ledgerflow.eventlog.integrity import MAX_ATTEMPT
from ledgerflow.eventlog.names import check_corr, check_queue_name, check_run_id
from ledgerflow.eventlog.records import StepCreated

from .topology import MAX_MESSAGE_BYTES

SCHEMA_VERSION: Final = 1
MAX_NAME: Final = 1000
"""Characters of a step name, workflow name, queue name or reason a message may carry."""
KIND_STEP: Final = "step"
KIND_ACTIVATION: Final = "activation"
KIND_STEPS: Final = "steps"

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class StepMessage:
    """Asks a worker to run one attempt of one step of one run."""

    run_id: str
    step_id: str
    step_name: str
    attempt: int
    args: bytes
    queue: str
    # The run's workflow name, for log lines and nothing else: optional on the wire
    # ("wf"), so messages from processes that do not send it still decode.
    workflow: str = ""

    @property
    def message_id(self) -> str:
        """Identifies the attempt, so duplicates of one publish are recognisable downstream."""
        return f"{self.run_id}:{self.step_id}:{self.attempt}"


@dataclass(frozen=True, slots=True)
class StepBatch:
    """Several steps of one run for one queue, in one message.

    A fan-out then costs one confirmed publish per batch instead of one per
    step, which is where a fan-out's CPU goes otherwise. Outcomes are still
    recorded per step, so a redelivered batch re-runs only the steps whose
    outcome the log does not hold.
    """

    steps: tuple[StepMessage, ...]

    def __post_init__(self) -> None:
        if not self.steps:
            raise ValueError("a step batch needs at least one step")
        first = self.steps[0]
        if any(s.run_id != first.run_id or s.queue != first.queue for s in self.steps):
            raise ValueError("a step batch holds steps of one run and one queue only")

    @property
    def run_id(self) -> str:
        return self.steps[0].run_id

    @property
    def queue(self) -> str:
        return self.steps[0].queue

    @property
    def message_id(self) -> str:
        first, last = self.steps[0], self.steps[-1]
        return f"{first.run_id}:{first.step_id}..{last.step_id}:{first.attempt}"


@dataclass(frozen=True, slots=True)
class Activation:
    """Tells a scheduler that a run has new events to replay."""

    run_id: str
    reason: str = ""


Message = StepMessage | StepBatch | Activation


def step_message(
    run_id: str, step_id: str, created: StepCreated, *, attempt: int, workflow: str = ""
) -> StepMessage:
    """The message for one attempt of a step, from what its step_created records.

    The one place a step message is built (first dispatch, a retry, a recovery),
    so every sender asks a worker for exactly the call the log holds, on the
    queue the log names. Arguments the record cannot hold as bytes go as none:
    the worker's fingerprint check then refuses the message (the timer loop
    fails such a step before it gets here).
    """
    return StepMessage(
        run_id=run_id,
        step_id=step_id,
        step_name=created.name,
        attempt=attempt,
        args=created.args if created.args is not None else b"",
        queue=created.queue,
        workflow=workflow,
    )


def encode_message(msg: Message) -> bytes:
    """Encode with a version and kind so that decoders can refuse what they cannot read."""
    if isinstance(msg, StepMessage):
        payload: dict[str, Any] = {
            "v": SCHEMA_VERSION,
            "k": KIND_STEP,
            "run_id": msg.run_id,
            "step_id": msg.step_id,
            "step_name": msg.step_name,
            "attempt": msg.attempt,
            "args": msg.args,
            "queue": msg.queue,
        }
        if msg.workflow:
            payload["wf"] = msg.workflow
    elif isinstance(msg, StepBatch):
        payload = {
            "v": SCHEMA_VERSION,
            "k": KIND_STEPS,
            "run_id": msg.run_id,
            "queue": msg.queue,
            "steps": [[s.step_id, s.step_name, s.attempt, s.args] for s in msg.steps],
        }
        if msg.steps[0].workflow:
            payload["wf"] = msg.steps[0].workflow
    elif isinstance(msg, Activation):
        payload = {
            "v": SCHEMA_VERSION,
            "k": KIND_ACTIVATION,
            "run_id": msg.run_id,
            "reason": msg.reason,
        }
    else:  # pragma: no cover - guarded by the type checker
        raise TypeError(f"cannot encode {type(msg).__name__} as a broker message")
    packed: bytes = msgpack.packb(payload, use_bin_type=True)
    return packed


def decode_message(body: bytes) -> Message:
    """Decode a queue body; anything unexpected is a MalformedMessageError naming the problem.

    A body over ``MAX_MESSAGE_BYTES`` is refused before it is unpacked, and every
    msgpack length limit is bounded by the body's own length, so no body can make
    the consumer allocate far beyond its size. Nothing but MalformedMessageError
    leaves here, and its text quotes at most a few hundred characters of the body.
    """
    if not isinstance(body, bytes):
        raise MalformedMessageError(f"message body must be bytes, got {type(body).__name__}")
    size = len(body)
    if size > MAX_MESSAGE_BYTES:
        raise MalformedMessageError(
            f"message body is {size} bytes, over the {MAX_MESSAGE_BYTES}-byte limit"
        )
    shape = _Shape(size)
    try:
        raw = msgpack.unpackb(
            body,
            raw=False,
            strict_map_key=True,
            object_hook=shape.map,
            list_hook=shape.array,
            max_str_len=size,
            max_bin_len=size,
            max_array_len=size,
            max_map_len=size // 2,
            max_ext_len=size,
        )
    except MalformedMessageError:
        raise
    except Exception as exc:  # msgpack raises several unrelated types for garbage
        raise MalformedMessageError(
            f"message body ({size} bytes) is not valid msgpack: "
            f"{type(exc).__name__}: {brief(str(exc))}"
        ) from None
    if not isinstance(raw, dict):
        raise MalformedMessageError(f"message body must be a msgpack map, got {type(raw).__name__}")
    version = raw.get("v")
    if version != SCHEMA_VERSION:
        raise MalformedMessageError(
            f"unsupported message schema version {_shown(version)}; "
            f"this process supports version {SCHEMA_VERSION}"
        )
    kind = raw.get("k")
    if kind == KIND_STEP:
        return StepMessage(
            run_id=_run_id(raw, kind),
            step_id=_step_id(raw, kind),
            step_name=_name(raw, kind, "step_name"),
            attempt=_attempt(raw),
            args=_field(raw, kind, "args", bytes),
            queue=_queue(raw, kind),
            workflow=_workflow(raw, kind),
        )
    if kind == KIND_STEPS:
        return _batch(raw)
    if kind == KIND_ACTIVATION:
        return Activation(
            run_id=_run_id(raw, kind),
            reason=_name(raw, kind, "reason") if "reason" in raw else "",
        )
    raise MalformedMessageError(
        f"unknown message kind {_shown(kind)}; expected {KIND_STEP!r}, {KIND_STEPS!r} or "
        f"{KIND_ACTIVATION!r}"
    )


def _shown(value: Any) -> str:
    """A field value from the body, for an error message: short, and never a failure itself."""
    if isinstance(value, (str, bytes, int, float, bool)) or value is None:
        return brief(repr(value), 80)
    return f"a {type(value).__name__}"


class _Shape:
    """Stops unpacking a body that cannot be a message before it fills memory.

    A message is one map, plus a list of four-field arrays for a batch, each
    holding a step's arguments. Empty maps and arrays cost a byte each on the
    wire and some 60 in memory: a body of them would cost 60 times its size.
    Counting them as they are built (the hooks run bottom up, one per
    container) keeps what a body can allocate to a small multiple of its size.
    """

    __slots__ = ("arrays", "limit", "maps")

    def __init__(self, size: int) -> None:
        self.maps = 0
        self.arrays = 0
        self.limit = 2 + size // 8  # each array of a real message holds a step: 8+ bytes

    def map(self, value: dict[Any, Any]) -> dict[Any, Any]:
        self.maps += 1
        if self.maps > 1:
            raise MalformedMessageError("a message body is one map, with no map inside it")
        return value

    def array(self, value: list[Any]) -> list[Any]:
        self.arrays += 1
        if self.arrays > self.limit:
            raise MalformedMessageError("a message body holds more arrays than steps can fill")
        return value


def _field(raw: dict[Any, Any], kind: str, name: str, expected: type[_T]) -> _T:
    """Fetch one field, naming it when it is missing or of the wrong type."""
    if name not in raw:
        raise MalformedMessageError(f"{kind} message is missing field {name!r}")
    value = raw[name]
    if not isinstance(value, expected):
        raise MalformedMessageError(
            f"{kind} message field {name!r} must be {expected.__name__}, got {type(value).__name__}"
        )
    return value


def _run_id(raw: dict[Any, Any], kind: str) -> str:
    """A run id that breaks the naming rule is a malformed message, never a key or a timer."""
    try:
        return check_run_id(_field(raw, kind, "run_id", str))
    except InvalidArgumentError as exc:
        raise MalformedMessageError(f"{kind} message field 'run_id': {exc}") from None


def _step_id(raw: dict[Any, Any], kind: str) -> str:
    try:
        return check_corr(_field(raw, kind, "step_id", str))
    except InvalidArgumentError as exc:
        raise MalformedMessageError(f"{kind} message field 'step_id': {exc}") from None


def _batch(raw: dict[Any, Any]) -> StepBatch:
    run_id = _run_id(raw, KIND_STEPS)
    queue = _queue(raw, KIND_STEPS)
    items = _field(raw, KIND_STEPS, "steps", list)
    workflow = _workflow(raw, KIND_STEPS)
    if not items:
        raise MalformedMessageError("steps message has an empty 'steps' list")
    steps = []
    for n, item in enumerate(items):
        if not isinstance(item, list) or len(item) != 4:
            raise MalformedMessageError(
                f"steps message item {n} must be [step_id, step_name, attempt, args]"
            )
        fields = dict(zip(("step_id", "step_name", "attempt", "args"), item, strict=True))
        steps.append(
            StepMessage(
                run_id=run_id,
                step_id=_step_id(fields, f"{KIND_STEPS}[{n}]"),
                step_name=_name(fields, f"{KIND_STEPS}[{n}]", "step_name"),
                attempt=_attempt(fields, f"{KIND_STEPS}[{n}]"),
                args=_field(fields, f"{KIND_STEPS}[{n}]", "args", bytes),
                queue=queue,
                workflow=workflow,
            )
        )
    return StepBatch(tuple(steps))


def _workflow(raw: dict[Any, Any], kind: str) -> str:
    return _name(raw, kind, "wf") if "wf" in raw else ""


def _name(raw: dict[Any, Any], kind: str, field: str) -> str:
    """A step or workflow name, or a reason: text that ends up in logs and dead-letter headers."""
    value = _field(raw, kind, field, str)
    if len(value) > MAX_NAME:
        raise MalformedMessageError(
            f"{kind} message field {field!r} is {len(value)} characters, over {MAX_NAME}"
        )
    return value


def _queue(raw: dict[Any, Any], kind: str) -> str:
    """The step queue's short name, by the rule every queue name follows."""
    value = _field(raw, kind, "queue", str)
    try:
        if len(value) > MAX_NAME:
            raise ConfigurationError(f"{len(value)} characters, over {MAX_NAME}")
        return check_queue_name(value)
    except ConfigurationError as exc:
        raise MalformedMessageError(f"{kind} message field 'queue': {exc}") from None


def _attempt(raw: dict[Any, Any], kind: str = KIND_STEP) -> int:
    """bool is an int subclass in Python; an attempt of True is a bug on the sender's side."""
    attempt = _field(raw, kind, "attempt", int)
    if isinstance(attempt, bool) or attempt < 1:
        raise MalformedMessageError(
            f"{kind} message field 'attempt' must be a positive int, got {_shown(attempt)}"
        )
    if attempt > MAX_ATTEMPT:
        raise MalformedMessageError(
            f"{kind} message field 'attempt' must be at most {MAX_ATTEMPT}, got {attempt!r}"
        )
    return attempt
