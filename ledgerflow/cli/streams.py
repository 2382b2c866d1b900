"""``ledgerflow runs stream RUN_ID NAME``: follow a run's output stream from a terminal.

Only parsing and printing: the reading is ``Client.stream``'s. Every chunk is
printed escaped (a step's bytes must not drive the operator's terminal), except
that ``--text`` lets newlines and tabs of text chunks through, so tokens read as
the prose they are.
"""

from __future__ import annotations

import argparse
import json
import sys

from ledgerflow.eventlog.outputs import Chunk
from ledgerflow.scheduler.client import Client

from .args import run_id_arg, start_arg, stream_name_arg
from .common import EXIT_OK
from .format import json_default, printable


def _text(chunk: Chunk) -> str:
    value = chunk.value if isinstance(chunk.value, str) else repr(chunk.value)
    return "\n".join(
        "\t".join(printable(p) for p in line.split("\t")) for line in value.split("\n")
    )


async def cmd_runs_stream(args: argparse.Namespace) -> int:
    async with Client.connect(args.amqp_url, args.redis_url, namespace=args.namespace) as client:
        async for chunk in client.stream(args.run_id, args.name, start=args.start):
            if args.json:
                line = {
                    "index": chunk.index,
                    "step": chunk.step,
                    "attempt": chunk.attempt,
                    "restarted": chunk.restarted,
                    "value": chunk.value,
                }
                print(json.dumps(line, default=json_default), flush=True)
            elif args.text:
                if chunk.restarted:
                    print(
                        f"\n[step {chunk.step} restarted: attempt {chunk.attempt}]",
                        file=sys.stderr,
                        flush=True,
                    )
                print(_text(chunk), end="", flush=True)
            else:
                mark = " restarted" if chunk.restarted else ""
                print(
                    f"{chunk.index:<6} {chunk.step}#{chunk.attempt}{mark}  "
                    f"{printable(repr(chunk.value))}",
                    flush=True,
                )
        if args.text:
            print()
    return EXIT_OK


def register(runs: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``stream`` to ``ledgerflow runs``."""
    stream = runs.add_parser(
        "stream",
        help="follow a run's output stream (what its steps write with lf.stream)",
        description="Prints the stream's chunks as they are written; returns when its "
        "writer closes it or the run ends.",
    )
    stream.add_argument("run_id", type=run_id_arg)
    stream.add_argument("name", type=stream_name_arg, help="the stream's name, e.g. tokens")
    stream.add_argument(
        "--start", type=start_arg, default=0, help="the first position to print (default 0)"
    )
    shown = stream.add_mutually_exclusive_group()
    shown.add_argument("--json", action="store_true", help="one JSON object per chunk")
    shown.add_argument(
        "--text", action="store_true", help="text chunks as they are, joined (tokens)"
    )
    stream.set_defaults(handler=cmd_runs_stream)
