"""structlog set-up shared by every ledgerflow process.

JSON lines when stderr is not a terminal (for log shippers), readable console
output when it is. Every line carries the process id so lines from a fleet
can be told apart, no line carries a URL's password (``redact_secrets``), and no
text value in a line is longer than ``MAX_LOG_VALUE`` (``bound_values``).
"""

from __future__ import annotations

import contextvars
import logging
import os
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any

import structlog

from ledgerflow.eventlog.text import clip
from ledgerflow.eventlog.urls import redact_text

from .observer import Observer, StepAttempt

MAX_LOG_VALUE = 8000
"""Characters of one text value in a log line (an error message, a traceback, a reason).

Values quote what came in: a step raising an 8 MB message, a 300 KB step name in a
forged message. A log line must stay a line a shipper accepts and a person can read.
"""


def add_pid(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    event.setdefault("pid", os.getpid())
    return event


def redact_secrets(
    _logger: Any, _name: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Hide URL credentials in every text value: an error quoting a URL, a traceback.

    The check before the regex keeps the cost to a substring search on lines
    without a URL or a query string (nearly all of them).
    """
    for key, value in event.items():
        if isinstance(value, str) and ("://" in value or "=" in value):
            event[key] = redact_text(value)
    return event


def bound_values(
    _logger: Any, _name: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Clip every long text value, keeping its head and tail (``eventlog.text.clip``)."""
    for key, value in event.items():
        if isinstance(value, str) and len(value) > MAX_LOG_VALUE:
            event[key] = clip(value, MAX_LOG_VALUE)
    return event


def configure_logging(level: str | None = None, *, json: bool | None = None) -> None:
    name = (level or os.environ.get("LEDGERFLOW_LOG_LEVEL") or "info").upper()
    numeric = logging.getLevelName(name)
    if not isinstance(numeric, int):
        numeric = logging.INFO
    use_json = (not sys.stderr.isatty()) if json is None else json
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if use_json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            add_pid,
            structlog.processors.format_exc_info,
            bound_values,
            redact_secrets,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )


_step_tokens: contextvars.ContextVar[Mapping[str, contextvars.Token[Any]] | None] = (
    contextvars.ContextVar("ledgerflow_step_log_tokens", default=None)
)


class StepLogContext(Observer):
    """Log lines of a step's own code carry the step's fields, as the worker's own lines do.

    The fields are bound as structlog context variables around the call, in the
    task that runs the step (tasks the step starts inherit them), and put back as
    they were afterwards.
    """

    def before_step_call(self, attempt: StepAttempt) -> None:
        _step_tokens.set(structlog.contextvars.bind_contextvars(**attempt.log_fields()))

    def after_step_call(self, attempt: StepAttempt) -> None:
        tokens = _step_tokens.get()
        if tokens is not None:
            _step_tokens.set(None)
            structlog.contextvars.reset_contextvars(**tokens)
