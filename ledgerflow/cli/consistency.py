"""``ledgerflow runs verify / repair``: a run's derived state against its stream.

The stream is the truth; the status hash and the indexes are derived from it
(``eventlog.derived``). ``verify`` reports where they disagree (exit 1),
``repair`` rebuilds them from the stream.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Awaitable, Callable

from ledgerflow.eventlog.derived import repair_run, verify_run
from ledgerflow.eventlog.errors import ConfigurationError
from ledgerflow.eventlog.store import EventStore, RunIndex
from ledgerflow.worker.backend import connect

from .args import run_id_arg
from .common import EXIT_FAILED, EXIT_OK, settings_of
from .format import printable


async def _runs_to_check(args: argparse.Namespace, store: RunIndex) -> list[str]:
    if args.run_id:
        return [args.run_id]
    if not args.all:
        raise ConfigurationError("name a RUN_ID or pass --all")
    found: list[str] = []
    for shard in range(store.names.shards):
        found += [run for run, _ in await store.active_runs(shard, limit=100_000)]
    return found


async def _check_all(
    args: argparse.Namespace,
    store: EventStore,
    check: Callable[[EventStore, str], Awaitable[list[str]]],
) -> dict[str, list[str]]:
    """Each run's problems; with --all, a run removed since it was listed is left out.

    A run listed as active can finish and be removed by retention before its
    turn: it has nothing left to disagree with, so it is not reported.
    """
    report: dict[str, list[str]] = {}
    for run_id in await _runs_to_check(args, store):
        problems = await check(store, run_id)
        if problems and not args.run_id and not await _still_there(store, run_id):
            continue
        report[run_id] = problems
    return report


async def _still_there(store: EventStore, run_id: str) -> bool:
    return bool(await store.read(run_id, count=1)) or await store.exists(run_id)


async def cmd_runs_verify(args: argparse.Namespace) -> int:
    """Exit 0 if every checked run's derived state matches its stream, 1 otherwise."""
    async with connect(settings_of(args)) as backends:
        report = await _check_all(args, backends.store, verify_run)
    return _print_checks(report, args.json, verb="consistent")


async def cmd_runs_repair(args: argparse.Namespace) -> int:
    async with connect(settings_of(args)) as backends:
        report = await _check_all(args, backends.store, repair_run)
    _print_checks(report, args.json, verb="already consistent", fixed=True)
    return EXIT_OK


def _print_checks(
    report: dict[str, list[str]], as_json: bool, *, verb: str, fixed: bool = False
) -> int:
    if as_json:
        print(json.dumps({"runs": len(report), "problems": report}))
    else:
        for run_id, problems in report.items():
            if not problems:
                print(f"{printable(run_id)}: {verb}")
                continue
            print(f"{printable(run_id)}: {'repaired' if fixed else 'INCONSISTENT'}")
            for problem in problems:
                print(f"  - {printable(problem)}")
        bad = sum(1 for p in report.values() if p)
        print(f"{len(report)} run(s) checked, {bad} {'repaired' if fixed else 'inconsistent'}")
    return EXIT_FAILED if any(report.values()) else EXIT_OK


def register(runs: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``verify`` and ``repair`` to ``ledgerflow runs``."""
    for name, handler, text in (
        ("verify", cmd_runs_verify, "report where derived state disagrees with the stream"),
        ("repair", cmd_runs_repair, "rebuild derived state (hash, indexes) from the stream"),
    ):
        check = runs.add_parser(name, help=text)
        check.add_argument("run_id", nargs="?", type=run_id_arg)
        check.add_argument("--all", action="store_true", help="every unfinished run")
        check.add_argument("--json", action="store_true")
        check.set_defaults(handler=handler)
