"""``ledgerflow hooks resume TOKEN``: send a payload to a run waiting on a durable hook."""

from __future__ import annotations

import argparse
import json

from ledgerflow.scheduler.client import Client

from .common import EXIT_OK, json_arg
from .format import printable


async def cmd_hooks_resume(args: argparse.Namespace) -> int:
    payload = json_arg(args.payload, "--payload", object)
    async with Client.connect(args.amqp_url, args.redis_url, namespace=args.namespace) as client:
        run_id = await client.resume_hook(args.token, payload)
    if args.json:
        print(json.dumps({"token": args.token, "run_id": run_id}))
    else:
        print(f"hook {printable(args.token)} resumed (run {printable(run_id)})")
    return EXIT_OK


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``hooks resume`` to the top-level commands."""
    hooks = sub.add_parser("hooks", help="durable hooks").add_subparsers(
        dest="hooks", required=True
    )
    resume = hooks.add_parser("resume", help="send a payload to a waiting hook")
    resume.add_argument("token")  # checked by resume_hook: an old hook's token still resumes
    resume.add_argument("--payload", default="null", help="JSON payload")
    resume.add_argument("--json", action="store_true")
    resume.set_defaults(handler=cmd_hooks_resume)
