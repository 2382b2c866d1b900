"""``ledgerflow migrate``: move a namespace's Redis data to the current key layout.

Needs only Redis (RabbitMQ holds no layout). Refuses while workers of the
namespace are alive, and does nothing without ``--yes``; safe to run again.
"""

from __future__ import annotations

import argparse
import sys

from ledgerflow.eventlog.migrate import Migration, migrate_namespace
from ledgerflow.eventlog.names import Names
from ledgerflow.eventlog.redis_client import REDIS_SCHEMES
from ledgerflow.eventlog.urls import check_url
from ledgerflow.worker.backend import redis_store

from .common import EXIT_CODES, EXIT_FAILED, EXIT_OK, EXIT_USAGE, settings_of
from .format import dump, printable


async def cmd_migrate(args: argparse.Namespace) -> int:
    if not args.yes:
        print(
            "ledgerflow: refusing to migrate without --yes; stop the namespace's workers, "
            "schedulers and reconciler first (the migration renames every run's keys)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    settings = settings_of(args)
    check_url(settings.redis_url, REDIS_SCHEMES, "Redis")
    store = redis_store(settings.redis_url, Names(settings.namespace))
    try:
        await store.ping()
        report = await migrate_namespace(store, force=args.force)
    finally:
        await store.close()
    _print(report, settings.namespace, args.json)
    return EXIT_FAILED if report.skipped else EXIT_OK


def _print(report: Migration, namespace: str, as_json: bool) -> None:
    if as_json:
        dump(
            {
                "namespace": namespace,
                "already_migrated": report.already,
                "runs": len(report.runs),
                "repaired": report.repaired,
                "skipped": report.skipped,
                "deleted_indexes": report.deleted_indexes,
            }
        )
        return
    if report.already:
        print(f"namespace {namespace!r}: already in the current key layout, nothing to do")
        return
    for key, why in report.skipped.items():
        print(f"{printable(key)}: skipped, {printable(why)}", file=sys.stderr)
    print(
        f"namespace {namespace!r}: {len(report.runs)} runs moved to the current key layout, "
        f"{report.deleted_indexes} old index keys deleted, {len(report.skipped)} skipped"
    )


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    migrate = sub.add_parser(
        "migrate",
        help="move a namespace's Redis data to the current key layout (needs --yes)",
        description=(
            "Move the runs of a namespace written by ledgerflow before Redis Cluster support "
            "into the current key layout: each run's keys are renamed into its shard and its "
            "index entries rebuilt from its log. Stop the namespace's workers, schedulers and "
            "reconciler first; they refuse to start on the old layout until this has run. "
            "Safe to run again if it was interrupted."
        ),
        epilog=EXIT_CODES + " (1 also if a key that looked like a run was skipped)",
    )
    migrate.add_argument("--yes", action="store_true", help="really migrate")
    migrate.add_argument(
        "--force", action="store_true", help="migrate even if worker presence keys exist"
    )
    migrate.add_argument("--json", action="store_true", help="print the report as JSON")
    migrate.set_defaults(handler=cmd_migrate)
