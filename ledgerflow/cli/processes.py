"""``ledgerflow worker / scheduler / reconciler``: the long-running processes.

Only argument parsing and wiring live here: each command connects, builds the
layer's service and runs it until SIGTERM/SIGINT (``worker.process``).
``worker --processes N`` and the event loop are handled in ``supervisor``.
"""

from __future__ import annotations

import argparse
import asyncio

from ledgerflow.eventlog.errors import ConfigurationError
from ledgerflow.ops.lease import Lease
from ledgerflow.scheduler import watchdog
from ledgerflow.scheduler.historylimits import (
    DEFAULT_LIMIT,
    DEFAULT_WARN,
    LIMIT_ENV,
    WARN_ENV,
    HistoryLimits,
)
from ledgerflow.scheduler.janitor import Janitor
from ledgerflow.scheduler.reconciler import (
    DEFAULT_INTERVAL,
    DEFAULT_MAX_RECHECK,
    DEFAULT_STALE_AFTER,
    Reconciler,
)
from ledgerflow.scheduler.schedules import schedules
from ledgerflow.scheduler.service import Scheduler
from ledgerflow.worker.backend import connect
from ledgerflow.worker.process import run_until_signalled
from ledgerflow.worker.service import (
    DEFAULT_ACK_AFTER,
    DEFAULT_CONCURRENCY,
    DEFAULT_GRACE,
    MIN_ACK_AFTER,
    Worker,
    worker_identity,
)

from .archive import add_retention_archive_options, retention_disposer
from .args import non_negative_float, positive_float, positive_int, retention_arg
from .common import EXIT_OK, import_app, settings_of
from .metrics import add_options as add_metrics_options
from .metrics import exported, step_queues

RUNS_CODE = frozenset({"worker", "scheduler", "reconciler"})
"""These commands run workflow or step code: an unknown class there stays an error."""


async def cmd_worker(args: argparse.Namespace) -> int:
    import_app(args.app)
    async with connect(settings_of(args)) as backends, exported(args, backends, step_queues(args)):
        queues = args.queues.split(",") if args.queues else None
        worker = Worker(
            backends.store,
            backends.broker,
            queues=queues,
            concurrency=args.concurrency,
            grace=args.grace,
            ack_after=args.ack_after,
        )
        if not args.with_scheduler:
            await run_until_signalled(worker.start, worker.stop, what="worker")
            return EXIT_OK
        # The worker runs what this scheduler just scheduled, when it has room (eager
        # dispatch), and its outcomes activate this scheduler directly.
        scheduler = Scheduler(
            backends.store,
            backends.broker,
            local=worker,
            stall_budget=args.stall_budget,
            history=history_limits(args),
            schedules=schedules,
        )

        async def start() -> None:
            await worker.start()
            await scheduler.start()

        async def stop() -> None:
            await worker.stop()
            await scheduler.stop()

        await run_until_signalled(start, stop, what="worker+scheduler")
    return EXIT_OK


async def cmd_scheduler(args: argparse.Namespace) -> int:
    import_app(args.app)
    async with connect(settings_of(args)) as backends, exported(args, backends):
        scheduler = Scheduler(
            backends.store,
            backends.broker,
            stall_budget=args.stall_budget,
            history=history_limits(args),
            schedules=schedules,
        )
        await run_until_signalled(scheduler.start, scheduler.stop, what="scheduler")
    return EXIT_OK


async def cmd_reconciler(args: argparse.Namespace) -> int:
    async with connect(settings_of(args)) as backends, exported(args, backends):
        if backends.redis is None:
            raise ConfigurationError("the reconciler needs the Redis event store")
        lease = Lease(
            backends.redis,
            backends.names,
            owner=worker_identity(),
            ttl_ms=int(args.lease_ttl * 1000),
        )
        # Runs past their retention are removed each sweep, under the same lease.
        # With --retention-archive each such run is archived first (scheduler/archive.py).
        janitor = Janitor(
            backends.store,
            default_retention_ms=settings_of(args).retention_ms,
            dispose=retention_disposer(args, backends.store),
        )
        reconciler = Reconciler(
            backends.store,
            backends.broker,
            lease,
            stale_after=args.stale_after,
            interval=args.interval,
            max_recheck=args.max_recheck,
            janitor=janitor,
        )
        task: asyncio.Task[None] | None = None

        async def start() -> None:
            nonlocal task
            task = asyncio.create_task(reconciler.run())

        async def stop() -> None:
            reconciler.stop()
            if task is not None:
                await task

        await run_until_signalled(start, stop, what="reconciler")
    return EXIT_OK


def add_stall_budget(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--stall-budget",
        type=positive_float,
        default=watchdog.DEFAULT_BUDGET,
        help="seconds workflow code may run without awaiting before its run fails "
        f"(default {watchdog.DEFAULT_BUDGET:g}; scheduler and --with-scheduler)",
    )


def add_history_limits(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--history-warn",
        type=positive_int,
        default=None,
        help=f"warn (log and metric) once when a run's log passes this many events "
        f"(default ${WARN_ENV} or {DEFAULT_WARN}; scheduler and --with-scheduler)",
    )
    parser.add_argument(
        "--history-limit",
        type=positive_int,
        default=None,
        help=f"fail a run whose log passes this many events, with lf.HistoryLimitError "
        f"(default ${LIMIT_ENV} or {DEFAULT_LIMIT}; scheduler and --with-scheduler)",
    )


def history_limits(args: argparse.Namespace) -> HistoryLimits:
    """The flags first, then the environment, then the defaults."""
    return HistoryLimits.from_env(args.history_warn, args.history_limit)


def ack_after_seconds(text: str) -> float:
    """An argparse type: the hold limit of a step message (see worker.service.MIN_ACK_AFTER)."""
    value = positive_float(text)
    if value < MIN_ACK_AFTER:
        raise argparse.ArgumentTypeError(f"{text} is under the minimum of {MIN_ACK_AFTER:g} s")
    return value


def lease_ttl(text: str) -> float:
    """An argparse type: the reconciler's lease, at least 1 ms (Redis expires it in ms)."""
    value = positive_float(text)
    if value < 0.001:
        raise argparse.ArgumentTypeError(f"{text} is shorter than a millisecond")
    return value


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``worker``, ``scheduler`` and ``reconciler`` to the top-level commands."""
    worker = sub.add_parser("worker", help="run steps from the step queues")
    worker.add_argument("app", help="module defining the workflows and steps")
    worker.add_argument("--concurrency", type=positive_int, default=DEFAULT_CONCURRENCY)
    add_stall_budget(worker)
    add_history_limits(worker)
    worker.add_argument("--queues", help="comma-separated step queues (default: all registered)")
    worker.add_argument(
        "--with-scheduler",
        action="store_true",
        help="also run the scheduler role in this process (small deployments)",
    )
    worker.add_argument(
        "--processes",
        type=positive_int,
        default=1,
        help="run N worker processes under one supervisor (one core each)",
    )
    worker.add_argument(
        "--grace",
        type=non_negative_float,
        default=DEFAULT_GRACE,
        help="seconds running steps get to finish on SIGTERM before they go back to the queue",
    )
    worker.add_argument(
        "--ack-after",
        type=ack_after_seconds,
        default=DEFAULT_ACK_AFTER,
        help="seconds a step message is held unacked; longer steps are covered by the log "
        "(keep it well under RabbitMQ's consumer_timeout, 30 min by default)",
    )
    add_metrics_options(worker)
    worker.set_defaults(handler=cmd_worker)

    scheduler = sub.add_parser("scheduler", help="replay runs and schedule their steps")
    scheduler.add_argument("app")
    add_stall_budget(scheduler)
    add_history_limits(scheduler)
    add_metrics_options(scheduler)
    scheduler.set_defaults(handler=cmd_scheduler)

    reconciler = sub.add_parser(
        "reconciler", help="find and re-enqueue what the queues lost (one active at a time)"
    )
    reconciler.add_argument("--stale-after", type=positive_float, default=DEFAULT_STALE_AFTER)
    reconciler.add_argument("--interval", type=positive_float, default=DEFAULT_INTERVAL)
    reconciler.add_argument("--lease-ttl", type=lease_ttl, default=10.0)
    reconciler.add_argument(
        "--max-recheck",
        type=positive_float,
        default=DEFAULT_MAX_RECHECK,
        help="longest delay (s) before a run checked with nothing to do is checked again",
    )
    reconciler.add_argument(
        "--retention",
        type=retention_arg,
        default=None,
        help="remove finished runs this long after they finished, e.g. 7d, 12h, 30m, unless "
        "their workflow declares its own retention (default: $LEDGERFLOW_RETENTION, else keep)",
    )
    add_retention_archive_options(reconciler)
    add_metrics_options(reconciler)
    reconciler.set_defaults(handler=cmd_reconciler)
