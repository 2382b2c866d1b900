"""What every command group shares: exit codes, settings, the APP module, JSON arguments.

Command modules import from here and never from the package itself, so
``ledgerflow.cli`` (which wires them all into one parser) has no import cycle.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from typing import Any

from ledgerflow.eventlog import codec
from ledgerflow.eventlog.errors import ConfigurationError, UnknownWorkflowError
from ledgerflow.eventlog.settings import Settings, env_retention
from ledgerflow.scheduler.registry import WorkflowFunction, workflows

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNAVAILABLE, EXIT_NOT_FOUND = 0, 1, 2, 3, 4

EXIT_CODES = (
    "exit codes: 0 ok, 1 the command (or the run) failed, 2 bad usage or configuration, "
    "3 RabbitMQ or Redis unreachable, 4 not found"
)
"""The epilog of ``ledgerflow --help`` and of the runbook commands."""


def settings_of(args: argparse.Namespace) -> Settings:
    """The servers and namespace: the global options first, then the environment."""
    return Settings.from_env(
        args.amqp_url,
        args.redis_url,
        args.namespace,
        retention_of(args),
        redis_durability=getattr(args, "redis_durability", None),
    )


def retention_of(args: argparse.Namespace) -> int | None:
    """The namespace default retention (ms): the reconciler's --retention, else the environment."""
    given: int | None = getattr(args, "retention", None)
    return given if given is not None else env_retention()


def import_app(app: str) -> Any:
    """Import the module that defines the workflows and steps (like ``celery -A``).

    Whatever the module raises while it is imported (a missing dependency, a typo,
    its own configuration check) is a ConfigurationError naming the module: the
    process cannot do its job, and a traceback from inside importlib helps nobody.

    The operator named it, so its dataclasses and pydantic models (and those of
    its submodules) may be rebuilt from payloads: it joins the codec's allow-list.
    """
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(app)
    except ModuleNotFoundError as exc:
        raise ConfigurationError(f"cannot import APP module {app!r}: {exc}") from exc
    except Exception as exc:
        raise ConfigurationError(
            f"APP module {app!r} raised {type(exc).__name__} while being imported: {exc}"
        ) from exc
    codec.allow_modules(app)
    return module


def resolve_workflow(target: str) -> str:
    """APP:WORKFLOW -> the registered workflow name (attribute name or registered name)."""
    app, sep, name = target.partition(":")
    if not sep or not app or not name:
        raise ConfigurationError(f"expected APP:WORKFLOW (module:workflow), got {target!r}")
    module = import_app(app)
    attribute = getattr(module, name, None)
    if isinstance(attribute, WorkflowFunction):
        return attribute.name
    if name in workflows:
        return name
    raise UnknownWorkflowError(
        f"{app!r} defines no workflow {name!r} (known: {', '.join(workflows.names()) or 'none'})"
    )


_JSON_KINDS = {list: "list (array)", dict: "object", object: "value"}


def json_arg(text: str, what: str, kind: type) -> Any:
    """A JSON command-line argument of the expected kind; bad usage (exit 2) otherwise."""
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise ConfigurationError(f"{what} is not valid JSON: {exc}") from None
    if not isinstance(value, kind):
        raise ConfigurationError(
            f"{what} must be a JSON {_JSON_KINDS[kind]}, got {type(value).__name__}: {text!r}"
        )
    return value
