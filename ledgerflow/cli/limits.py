"""``ledgerflow limits``: concurrency slots in use and steps waiting, per limit and key."""

from __future__ import annotations

import argparse
import dataclasses
import json

from ledgerflow.worker.backend import connect

from .common import EXIT_OK, settings_of
from .format import printable, table


async def cmd_limits(args: argparse.Namespace) -> int:
    async with connect(settings_of(args)) as backends:
        uses = await backends.store.slot_uses()
    if args.json:
        print(json.dumps([dataclasses.asdict(u) for u in uses]))
        return EXIT_OK
    if not uses:
        print("no concurrency slot is held or waited for")
        return EXIT_OK
    rows = [(printable(u.limit), printable(u.key) or "-", u.holding, u.waiting) for u in uses]
    print(table(["LIMIT", "KEY", "IN USE", "WAITING"], rows))
    return EXIT_OK


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    limits = sub.add_parser(
        "limits",
        help="concurrency limits: slots in use and steps waiting, per key",
        description="Every (limit, key) of lf.Concurrency with a slot held or a step waiting.",
    )
    limits.add_argument("--json", action="store_true")
    limits.set_defaults(handler=cmd_limits)
