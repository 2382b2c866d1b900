"""``ledgerflow runs archive``: finished runs to compressed history files, then out of Redis.

Only parsing, wiring and printing live here; what is written and when a run is
removed is ``scheduler.archive``, where to is ``ops.archive`` (``--to DIR`` or
``--to s3://BUCKET/PREFIX``). ``runs show --archive FILE`` reads the files back.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from ledgerflow.eventlog.kinds import RUN_TERMINAL_STATES
from ledgerflow.eventlog.store import EventStore, RemoveOutcome
from ledgerflow.ops.archive import ArchiveError, open_sink
from ledgerflow.scheduler.archive import Archived, ArchiveOutcome, Archiver
from ledgerflow.scheduler.janitor import finished_before
from ledgerflow.worker.backend import connect

from .args import before_arg, bounded_count, run_id_arg
from .common import EXIT_CODES, EXIT_FAILED, EXIT_NOT_FOUND, EXIT_OK, import_app, settings_of
from .format import Progress, dump, printable

FINISHED = tuple(sorted(status.value for status in RUN_TERMINAL_STATES))
_LEFT_IN_PLACE = (ArchiveOutcome.LIVE, ArchiveOutcome.MOVED, ArchiveOutcome.UNREADABLE)


async def cmd_runs_archive(args: argparse.Namespace) -> int:
    """Archive the runs named, or the finished runs matching; exit 1 if any was left in Redis."""
    if args.app:
        import_app(args.app)  # its classes decode exactly, so its runs can be archived
    sink = open_sink(args.to)
    statuses = frozenset(args.status or FINISHED)
    before = args.before if args.before is not None else int(time.time() * 1000)
    done: list[Archived] = []
    failure: tuple[str, str] | None = None
    async with connect(settings_of(args)) as backends:
        store = backends.store
        run_ids: list[str] = list(dict.fromkeys(args.run_ids))
        if not run_ids:
            run_ids = await finished_before(store, before, statuses=statuses, limit=args.limit)
        archiver = Archiver(store, sink)
        progress = Progress(len(run_ids), "archive")
        try:
            for run_id in run_ids:
                try:
                    done.append(await archiver.archive(run_id))
                except (ArchiveError, OSError) as exc:
                    # The sink could not promise the file: the run stays, and so do the rest.
                    failure = (run_id, f"{type(exc).__name__}: {exc}")
                    break
                progress.advance()
        finally:
            progress.close()
    _report(args, sink.where, done, failure, matched=len(run_ids))
    if failure or any(a.outcome in _LEFT_IN_PLACE for a in done):
        return EXIT_FAILED
    if args.run_ids and any(a.outcome is ArchiveOutcome.NOT_FOUND for a in done):
        return EXIT_NOT_FOUND
    return EXIT_OK


def _report(
    args: argparse.Namespace,
    where: str,
    done: list[Archived],
    failure: tuple[str, str] | None,
    *,
    matched: int,
) -> None:
    def of(outcome: ArchiveOutcome) -> list[Archived]:
        return [a for a in done if a.outcome is outcome]

    archived = of(ArchiveOutcome.ARCHIVED)
    if args.json:
        report: dict[str, Any] = {
            "to": where,
            "archived": [
                {"run_id": a.run_id, "name": a.name, "events": a.events, "bytes": a.size}
                for a in archived
            ],
            "live": [a.run_id for a in of(ArchiveOutcome.LIVE)],
            "moved": [a.run_id for a in of(ArchiveOutcome.MOVED)],
            "unreadable": {a.run_id: a.reason for a in of(ArchiveOutcome.UNREADABLE)},
            "not_found": [a.run_id for a in of(ArchiveOutcome.NOT_FOUND)],
            "failed": None if failure is None else {"run_id": failure[0], "error": failure[1]},
        }
        dump(report)
        return
    for a in archived:
        print(f"{printable(a.run_id)}: archived {a.events} events ({a.size} bytes) as {a.name}")
    for a in of(ArchiveOutcome.LIVE):
        print(f"{printable(a.run_id)}: not finished, left in place", file=sys.stderr)
    for a in of(ArchiveOutcome.MOVED):
        print(
            f"{printable(a.run_id)}: changed while it was archived, left in place "
            "(archive it again)",
            file=sys.stderr,
        )
    for a in of(ArchiveOutcome.UNREADABLE):
        print(
            f"{printable(a.run_id)}: cannot be decoded exactly here, left in place "
            f"(--app MODULE or LEDGERFLOW_ALLOW_MODULES): {printable(a.reason)}",
            file=sys.stderr,
        )
    for a in of(ArchiveOutcome.NOT_FOUND):
        print(f"{printable(a.run_id)}: no such run", file=sys.stderr)
    if failure is not None:
        print(
            f"{printable(failure[0])}: archive not written, run left in place: "
            f"{printable(failure[1])}",
            file=sys.stderr,
        )
    if not matched:
        print("no finished run matches")
    else:
        print(f"archived {len(archived)} of {matched} runs to {printable(where)}")


RETENTION_ARCHIVE_ENV = "LEDGERFLOW_RETENTION_ARCHIVE"


def add_retention_archive_options(parser: argparse.ArgumentParser) -> None:
    """``--retention-archive`` and ``--app`` for the reconciler, whose janitor applies retention."""
    parser.add_argument(
        "--retention-archive",
        metavar="DIR",
        default=os.environ.get(RETENTION_ARCHIVE_ENV) or None,
        help="archive runs past their retention here (a directory or s3://BUCKET/PREFIX) "
        f"instead of deleting them (default: ${RETENTION_ARCHIVE_ENV}, else delete)",
    )
    parser.add_argument(
        "--app",
        metavar="MODULE",
        help="with --retention-archive: import the app, so runs holding its classes are "
        "archived exactly (without it they are left in place and logged)",
    )


def retention_disposer(
    args: argparse.Namespace, store: EventStore
) -> Callable[[str], Awaitable[RemoveOutcome]] | None:
    """The janitor's disposer ``--retention-archive`` asks for; None: plain removal."""
    if not args.retention_archive:
        return None
    if args.app:
        import_app(args.app)
    return Archiver(store, open_sink(args.retention_archive)).dispose


def register(runs: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``archive`` to ``ledgerflow runs``."""
    archive = runs.add_parser(
        "archive",
        help="write finished runs to compressed history files, then remove them from Redis",
        description=(
            "Each run becomes one gzip-compressed JSON Lines file, RUN_ID.jsonl.gz, in the "
            "`runs export` format (readable by `ledgerflow replay` and `runs show --archive`). "
            "A run is removed only after its file is fully written and synced, and only if it "
            "did not change meanwhile. Live runs are refused."
        ),
        epilog=EXIT_CODES,
    )
    archive.add_argument(
        "run_ids", nargs="*", metavar="RUN_ID", type=run_id_arg, help="these runs only"
    )
    archive.add_argument(
        "--to",
        required=True,
        metavar="DIR",
        help="a directory, or s3://BUCKET/PREFIX (pip install 'ledgerflow[s3]'; endpoint from "
        "$LEDGERFLOW_S3_ENDPOINT, credentials from the standard AWS variables)",
    )
    archive.add_argument(
        "--before",
        type=before_arg,
        help="finished before: 15m, 2h, 7d, 1w or an ISO time (UTC); default: now",
    )
    archive.add_argument(
        "--status", choices=FINISHED, action="append", help="only these (repeatable)"
    )
    archive.add_argument(
        "--limit", type=bounded_count, default=1000, help="at most N runs (up to 10000)"
    )
    archive.add_argument(
        "--app",
        metavar="MODULE",
        help="import the app first, so runs holding its classes are copied exactly",
    )
    archive.add_argument("--json", action="store_true")
    archive.set_defaults(handler=cmd_runs_archive)
