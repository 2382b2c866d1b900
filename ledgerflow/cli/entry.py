"""The ``ledgerflow`` command: one parser for every command group, and ``main``.

Only the wiring lives here. Each command group (processes, start, runs, hooks,
replay, schedules, dlq, queues, dashboard, migrate) is a module of this package that adds its
subcommands with a ``register`` call; the order of those calls is the order of
``--help``. ``main`` turns the errors of the layers into exit codes (see
``common``): 0 ok, 1 the run or command failed, 2 bad usage or configuration,
3 servers unreachable, 4 not found.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from ledgerflow.eventlog import codec
from ledgerflow.eventlog.durability import Durability
from ledgerflow.eventlog.errors import (
    ConfigurationError,
    HookNotFoundError,
    InvalidArgumentError,
    LedgerflowError,
    RunNotFoundError,
    ScheduleNotFoundError,
    ServiceUnavailableError,
    UnknownWorkflowError,
)
from ledgerflow.eventlog.settings import Settings
from ledgerflow.eventlog.urls import redact_text
from ledgerflow.ops.logs import configure_logging

from . import (
    archive,
    consistency,
    dashboard,
    deletion,
    dlq,
    hooks,
    limits,
    migrate,
    processes,
    queues,
    replay,
    runs,
    schedules,
    start,
    streams,
    webhooks,
)
from .common import (
    EXIT_CODES,
    EXIT_FAILED,
    EXIT_NOT_FOUND,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    import_app,
)
from .format import printable
from .supervisor import LOOPS, run_with_loop, supervise


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ledgerflow",
        description="Durable, event-sourced workflows on RabbitMQ and Redis.",
        epilog=EXIT_CODES,
    )
    parser.add_argument("--amqp-url", help="RabbitMQ URL (default $LEDGERFLOW_AMQP_URL)")
    parser.add_argument("--redis-url", help="Redis URL (default $LEDGERFLOW_REDIS_URL)")
    parser.add_argument("--namespace", help="key/queue namespace (default $LEDGERFLOW_NAMESPACE)")
    parser.add_argument(
        "--redis-durability",
        metavar="MODE",
        help="what an append waits for: none (default), replica[:N] (WAIT for N replicas), "
        "aof[:N] (WAITAOF, Redis 7.2+) (default $LEDGERFLOW_REDIS_DURABILITY)",
    )
    parser.add_argument("--log-level", help="debug, info, warning, error")
    parser.add_argument(
        "--loop",
        choices=LOOPS,
        default="auto",
        help="event loop: uvloop when installed (auto, the default), or force one",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    processes.register(sub)
    start.register(sub)
    runs_commands = runs.add_group(sub)
    consistency.register(runs_commands)
    hooks.register(sub)
    replay.register(sub, runs_commands)
    runs.register(runs_commands)
    streams.register(runs_commands)
    deletion.register(runs_commands)
    archive.register(runs_commands)
    schedules.register(sub)
    dlq.register(sub)
    queues.register(sub)
    limits.register(sub)
    dashboard.register(sub)
    migrate.register(sub)
    webhooks.register(sub)
    return parser


# Commands that run workflow or step code, where an unknown class must stay an error.
_RUNS_CODE = processes.RUNS_CODE | {"replay"}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    configure_logging(args.log_level)
    if getattr(args, "processes", 1) < 1:
        parser.error("--processes must be at least 1")
    try:
        return _run(args, argv)
    except ServiceUnavailableError as exc:
        return _fail(args, exc, EXIT_UNAVAILABLE)
    except (RunNotFoundError, HookNotFoundError, ScheduleNotFoundError) as exc:
        return _fail(args, exc, EXIT_NOT_FOUND)
    except (ConfigurationError, UnknownWorkflowError, InvalidArgumentError, TypeError) as exc:
        return _fail(args, exc, EXIT_USAGE)
    except LedgerflowError as exc:
        return _fail(args, exc, EXIT_FAILED)
    except KeyboardInterrupt:
        return EXIT_FAILED


def _run(args: argparse.Namespace, argv: list[str]) -> int:
    handler: Callable[[argparse.Namespace], Coroutine[Any, Any, int]] = args.handler
    if args.redis_durability is not None:
        # Checked here (a bad value is a usage error), and exported, so the commands
        # that connect through lf.Client.connect (start, runs, hooks) use it too.
        Durability.parse(args.redis_durability, "--redis-durability")
        os.environ["LEDGERFLOW_REDIS_DURABILITY"] = args.redis_durability
    if getattr(args, "processes", 1) > 1:
        # A broken APP is one error here, not N children failing and being restarted.
        import_app(args.app)
        return asyncio.run(supervise(argv, args.processes))
    if args.command in _RUNS_CODE:
        return run_with_loop(handler(args), args.loop)
    # Read-only tools show objects of classes this process cannot import.
    with codec.inspecting():
        return run_with_loop(handler(args), args.loop)


def _fail(args: argparse.Namespace, exc: BaseException, code: int) -> int:
    """One line on stderr: no URL password, no control character from stored data."""
    # The servers' URLs only (to redact them): reading the rest may be what failed.
    settings = Settings.from_env(
        args.amqp_url, args.redis_url, args.namespace, read_retention=False
    )
    text = redact_text(str(exc), [settings.amqp_url, settings.redis_url])
    print(f"ledgerflow: {printable(text)}", file=sys.stderr)
    return code
