"""Turn a finished step call into the event that records it."""

from __future__ import annotations

import traceback
from typing import Any

from ledgerflow.eventlog.delays import MAX_DELAY_MS
from ledgerflow.eventlog.errors import InvalidArgumentError, SerializationError, error_type_name
from ledgerflow.eventlog.events import EventType, NewEvent
from ledgerflow.eventlog.text import MAX_MESSAGE, MAX_NAME, clip, safe_str
from ledgerflow.eventlog.timers import Timer, TimerKind

from .retry import RetryPolicy

MAX_TRACEBACK = 8000
MAX_TRACEBACK_LINE = 1000
"""One line (or exception message) inside a traceback: the message itself is kept
in ``message``, so the traceback's copy of it need not repeat thousands of characters."""


type_name = error_type_name


def error_info(exc: BaseException) -> dict[str, str]:
    """Type, message and traceback text: what crosses the wire instead of the exception.

    Every part is bounded, whatever the exception holds: the same error is
    recorded in step_retrying, step_failed and run_failed, so an unbounded
    message would be stored once per attempt and again for the run.
    """
    return {
        "type": clip(type_name(type(exc)), MAX_NAME),
        "message": clip(safe_str(exc), MAX_MESSAGE),
        "traceback": traceback_text(exc),
    }


def traceback_text(exc: BaseException) -> str:
    """The formatted traceback, each line and the whole bounded (head and tail kept).

    Each piece is clipped as it is produced, so even a chain of exceptions with
    huge messages never builds a huge string.
    """
    try:
        pieces = traceback.TracebackException.from_exception(exc).format()
        text = "".join(clip(piece, MAX_TRACEBACK_LINE) for piece in pieces)
    except Exception as failure:  # formatting runs user __str__/__repr__ code
        text = f"<traceback unavailable: {type(failure).__name__}>\n"
    return clip(text, MAX_TRACEBACK)


def bounded_error(data: object) -> dict[str, str]:
    """A recorded error (type, message, traceback) with each part bounded.

    For error data read back from a log and recorded again elsewhere (a child's
    failure reported to its parent): it may predate the bounds, or be malformed.
    """
    fields = data if isinstance(data, dict) else {"message": data}
    return {
        "type": clip(safe_str(fields.get("type", "Error")), MAX_NAME),
        "message": clip(safe_str(fields.get("message", "")), MAX_MESSAGE),
        "traceback": clip(safe_str(fields.get("traceback", "")), MAX_TRACEBACK),
    }


def completed(
    step_id: str, attempt: int, result: Any, *, step_name: str, max_size: int
) -> NewEvent:
    """step_completed, or step_failed if the result itself cannot be recorded."""
    try:
        return NewEvent.of(
            EventType.STEP_COMPLETED,
            step_id,
            {"result": result},
            attempt=attempt,
            what=f"result of step {step_name!r}",
            max_size=max_size,
            offload=(("result",),),
        )
    except SerializationError as exc:
        return failed(step_id, attempt, exc)


def failed(step_id: str, attempt: int, exc: BaseException) -> NewEvent:
    return NewEvent.of(
        EventType.STEP_FAILED, step_id, {"error": error_info(exc)}, attempt=attempt, max_size=None
    )


def failure_event(
    run_id: str, step_id: str, attempt: int, exc: BaseException, policy: RetryPolicy
) -> NewEvent:
    """step_retrying with a timer for the next attempt, or step_failed when the policy gives up.

    The delay goes into the timer index in the same atomic append, never into
    RabbitMQ, so the wake-up survives any process dying.
    """
    if not policy.should_retry(exc, attempt):
        return failed(step_id, attempt, exc)
    try:
        delay_ms = min(MAX_DELAY_MS, int(policy.delay(exc, attempt) * 1000))
    except InvalidArgumentError as bad:
        # A retry that can never come: the attempt fails for good, saying why.
        return failed(step_id, attempt, _unhonoured(exc, bad))
    return NewEvent.of(
        EventType.STEP_RETRYING,
        step_id,
        {"error": error_info(exc), "delay_ms": delay_ms},
        attempt=attempt,
        timer=Timer(TimerKind.STEP_RETRY, run_id, step_id, attempt + 1),
        delay_ms=delay_ms,
        max_size=None,
    )


def _unhonoured(exc: BaseException, bad: InvalidArgumentError) -> InvalidArgumentError:
    """The error recorded for a retry whose requested delay cannot be honoured."""
    error = InvalidArgumentError(
        f"{bad}; the step is failed, not retried (it raised {type_name(type(exc))}: {exc})"
    )
    error.__cause__ = exc
    return error
