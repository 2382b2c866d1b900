"""``ledgerflow start APP:WORKFLOW``: start a run, and optionally wait for its result."""

from __future__ import annotations

import argparse
import json
import sys

from ledgerflow.eventlog.errors import RunCancelled, WorkflowFailedError
from ledgerflow.scheduler.client import Client

from .args import positive_float, run_id_arg
from .common import EXIT_FAILED, EXIT_OK, json_arg, resolve_workflow
from .format import printable


async def cmd_start(args: argparse.Namespace) -> int:
    name = resolve_workflow(args.target)
    call_args = json_arg(args.args, "--args", list)
    call_kwargs = json_arg(args.kwargs, "--kwargs", dict)
    async with Client.connect(args.amqp_url, args.redis_url, namespace=args.namespace) as client:
        run = await client.start(name, *call_args, run_id=args.run_id, **call_kwargs)
        print(run.run_id)
        if not args.wait:
            return EXIT_OK
        try:
            result = await run.result(timeout=args.timeout)
        except (WorkflowFailedError, RunCancelled) as exc:
            print(
                f"run {printable(run.run_id)} did not complete: {printable(exc)}", file=sys.stderr
            )
            return EXIT_FAILED
        print(json.dumps(result, default=repr))
    return EXIT_OK


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``start`` to the top-level commands."""
    start = sub.add_parser("start", help="start a run of APP:WORKFLOW")
    start.add_argument("target", metavar="APP:WORKFLOW")
    start.add_argument("--args", default="[]", help="JSON list of positional arguments")
    start.add_argument("--kwargs", default="{}", help="JSON object of keyword arguments")
    start.add_argument(
        "--run-id",
        type=run_id_arg,
        help="idempotency: starting twice with one id starts once (1-200 of A-Z a-z 0-9 _ . - :)",
    )
    start.add_argument("--wait", action="store_true", help="wait for and print the result")
    start.add_argument("--timeout", type=positive_float, default=None)
    start.set_defaults(handler=cmd_start)
