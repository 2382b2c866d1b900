"""``ledgerflow runs delete``: remove finished runs now, by id or by status and age.

What retention does on a schedule, done by an operator: each run goes through
``remove_run`` (one atomic step per run: its log, status hash, index entries,
timers, hook tokens and blobs, or nothing). Live runs are refused, each
reported, and the exit status says so. Nothing is removed without ``--yes``.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field

from ledgerflow.eventlog.kinds import RUN_TERMINAL_STATES
from ledgerflow.eventlog.store import RemoveOutcome
from ledgerflow.scheduler.janitor import finished_before
from ledgerflow.worker.backend import connect

from .args import before_arg, bounded_count, run_id_arg
from .common import EXIT_CODES, EXIT_FAILED, EXIT_NOT_FOUND, EXIT_OK, EXIT_USAGE, settings_of
from .format import dump, printable

FINISHED = tuple(sorted(RUN_TERMINAL_STATES))
DEFAULT_LIMIT = 1000


@dataclass
class Deleted:
    """Each run asked for, by what became of it."""

    removed: list[str] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)  # run -> live | moved
    not_found: list[str] = field(default_factory=list)

    def record(self, run_id: str, outcome: RemoveOutcome) -> None:
        if outcome is RemoveOutcome.REMOVED:
            self.removed.append(run_id)
        elif outcome is RemoveOutcome.NOT_FOUND:
            self.not_found.append(run_id)
        else:
            self.refused[run_id] = outcome.value

    @property
    def exit_code(self) -> int:
        """1 if any run was refused (live), else 4 if any was not found, else 0."""
        if self.refused:
            return EXIT_FAILED
        return EXIT_NOT_FOUND if self.not_found else EXIT_OK


async def cmd_runs_delete(args: argparse.Namespace) -> int:
    if bool(args.run_ids) == (args.status is not None or args.before is not None):
        print(
            "ledgerflow: name RUN_IDs, or select with --status and/or --before (not both)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    if not args.yes:
        print(
            "ledgerflow: refusing to delete runs without --yes; deleted runs are gone for good "
            "(look first: `ledgerflow runs list --status failed`)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    report = Deleted()
    async with connect(settings_of(args)) as backends:
        store = backends.store
        run_ids = list(dict.fromkeys(args.run_ids))
        if not run_ids:
            before = args.before if args.before is not None else await store.now_ms()
            statuses = frozenset([args.status] if args.status else RUN_TERMINAL_STATES)
            run_ids = await finished_before(store, before, statuses=statuses, limit=args.limit)
        for run_id in run_ids:
            report.record(run_id, await store.remove_run(run_id))
    _print(report, args.json)
    return report.exit_code


def _print(report: Deleted, as_json: bool) -> None:
    if as_json:
        dump(
            {
                "removed": report.removed,
                "refused": report.refused,
                "not_found": report.not_found,
            }
        )
        return
    for run_id in report.removed:
        print(f"{printable(run_id)}: deleted")
    for run_id, why in report.refused.items():
        reason = "still running (live runs are never deleted)" if why == "live" else why
        print(f"{printable(run_id)}: refused, {reason}", file=sys.stderr)
    for run_id in report.not_found:
        print(f"{printable(run_id)}: no such run", file=sys.stderr)
    print(
        f"{len(report.removed)} deleted, {len(report.refused)} refused, "
        f"{len(report.not_found)} not found"
    )


def register(runs: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``delete`` to ``ledgerflow runs``."""
    delete = runs.add_parser(
        "delete",
        help="remove finished runs now (needs --yes); live runs are refused",
        description=(
            "Remove finished runs and everything of them (log, status, index entries, timers, "
            "hook tokens, offloaded payloads), each in one atomic step. Name runs, or select "
            "finished runs by --status and/or --before."
        ),
        epilog=EXIT_CODES + " (1 also if any run was refused because it is live)",
    )
    delete.add_argument("run_ids", nargs="*", metavar="RUN_ID", type=run_id_arg)
    delete.add_argument("--status", choices=FINISHED, help="only runs that ended this way")
    delete.add_argument(
        "--before",
        type=before_arg,
        help="only runs that finished before: 30d, 12h, 15m (that long ago) or an ISO time",
    )
    delete.add_argument(
        "--limit",
        type=bounded_count,
        default=DEFAULT_LIMIT,
        help=f"with a selection, at most this many runs (default {DEFAULT_LIMIT}; run again)",
    )
    delete.add_argument("--yes", action="store_true", help="yes, delete them for good")
    delete.add_argument("--json", action="store_true")
    delete.set_defaults(handler=cmd_runs_delete)
