"""``ledgerflow runs export`` and ``ledgerflow replay``: replay tests from the command line.

Wired into the parser with one ``register`` call;
only parsing and wiring live here, the format and the check are in
``scheduler.history``.
"""

from __future__ import annotations

import argparse
import sys

from ledgerflow.eventlog.errors import ReplayDivergenceError, RunNotFoundError
from ledgerflow.scheduler.client import Client
from ledgerflow.scheduler.history import HistoryError, dump_history, load_history, replay

from .args import run_id_arg
from .common import EXIT_FAILED, EXIT_OK, EXIT_USAGE, resolve_workflow
from .format import printable


async def cmd_runs_export(args: argparse.Namespace) -> int:
    """Write a run's log as a history file: stdout by default, so it can be redirected."""
    async with Client.connect(args.amqp_url, args.redis_url, namespace=args.namespace) as client:
        events = await client.history(args.run_id)
    if not events:
        raise RunNotFoundError(args.run_id)  # main() turns this into exit code 4
    if args.output is None:
        dump_history(events, sys.stdout, run_id=args.run_id)
        return EXIT_OK
    count = dump_history(events, args.output, run_id=args.run_id)
    print(f"exported {count} events of run {printable(args.run_id)} to {printable(args.output)}")
    return EXIT_OK


async def cmd_replay(args: argparse.Namespace) -> int:
    """Replay a history file against the code: 0 if consistent, 1 with the divergence if not.

    The APP module is imported before the file is read so that the classes in the
    recorded data can be rebuilt. A file that cannot be used is bad input (exit 2).
    """
    name = resolve_workflow(args.target)
    try:
        history = load_history(args.file)
    except HistoryError as exc:
        print(f"ledgerflow: {printable(exc)}", file=sys.stderr)
        return EXIT_USAGE
    try:
        result = replay(history, name)
    except ReplayDivergenceError as exc:
        print(f"ledgerflow: {printable(exc)}", file=sys.stderr)
        return EXIT_FAILED
    except HistoryError as exc:
        print(f"ledgerflow: {printable(exc)}", file=sys.stderr)
        return EXIT_USAGE
    print(printable(result.summary()))
    return EXIT_OK


def register(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    runs: argparse._SubParsersAction[argparse.ArgumentParser],
) -> None:
    """Add ``replay`` to the top-level commands and ``export`` to ``runs``."""
    export = runs.add_parser("export", help="a run's log as a history file (JSON Lines)")
    export.add_argument("run_id", type=run_id_arg)
    export.add_argument("--output", "-o", help="write to FILE instead of stdout")
    export.set_defaults(handler=cmd_runs_export)

    check = sub.add_parser(
        "replay", help="replay a history file against today's code; exit 1 if it diverges"
    )
    check.add_argument("file", metavar="FILE", help="a history from `ledgerflow runs export`")
    check.add_argument("target", metavar="APP:WORKFLOW", help="the workflow to replay it with")
    check.set_defaults(handler=cmd_replay)
