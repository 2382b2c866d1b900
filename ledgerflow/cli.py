"""The ``ledgerflow`` command: processes, producers and runbook commands.

Only argument parsing and wiring live here; each command calls into the layers.
Exit codes: 0 ok, 1 the run or command failed, 2 bad usage or configuration, 3 servers unreachable,
4 not found.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import importlib
import json
import os
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from ledgerflow.eventlog import codec
from ledgerflow.eventlog.derived import repair_run, verify_run
from ledgerflow.eventlog.errors import (
    ConfigurationError,
    HookNotFoundError,
    InvalidArgumentError,
    LedgerflowError,
    RunCancelled,
    RunNotFoundError,
    ServiceUnavailableError,
    UnknownWorkflowError,
    WorkflowFailedError,
)
from ledgerflow.eventlog.events import Event
from ledgerflow.eventlog.fold import fold
from ledgerflow.eventlog.settings import Settings
from ledgerflow.eventlog.store import EventStore
from ledgerflow.eventlog.urls import redact_text
from ledgerflow.ops.lease import Lease
from ledgerflow.ops.logs import configure_logging
from ledgerflow.ops.timeline import TimelineRow, render, timeline
from ledgerflow.scheduler import watchdog
from ledgerflow.scheduler.client import Client
from ledgerflow.scheduler.reconciler import (
    DEFAULT_INTERVAL,
    DEFAULT_MAX_RECHECK,
    DEFAULT_STALE_AFTER,
    Reconciler,
)
from ledgerflow.scheduler.registry import WorkflowFunction, workflows
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

from .cli_args import run_id_arg
from .cli_dashboard import register as register_dashboard
from .cli_dlq import register as register_dlq
from .cli_format import (
    EXIT_CODES,
    json_default,
    non_negative_float,
    positive_float,
    positive_int,
    printable,
)
from .cli_processes import LOOPS, run_with_loop, supervise
from .cli_queues import register as register_queues
from .cli_replay import register as register_replay
from .cli_runs import register as register_runs
from .metrics_server import add_options as add_metrics_options
from .metrics_server import exported, step_queues

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNAVAILABLE, EXIT_NOT_FOUND = 0, 1, 2, 3, 4


def import_app(app: str) -> Any:
    """Import the module that defines the workflows and steps (like ``celery -A``).

    Whatever the module raises while it is imported (a missing dependency, a typo,
    its own configuration check) is a ConfigurationError naming the module: the
    process cannot do its job, and a traceback from inside importlib helps nobody.

    The operator named it, so its dataclasses and pydantic models (and those of
    its submodules) may be rebuilt from payloads: it joins the codec's allow-list.
    """
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(app)
    except ModuleNotFoundError as exc:
        raise ConfigurationError(f"cannot import APP module {app!r}: {exc}") from exc
    except Exception as exc:
        raise ConfigurationError(
            f"APP module {app!r} raised {type(exc).__name__} while being imported: {exc}"
        ) from exc
    codec.allow_modules(app)
    return module


def resolve_workflow(target: str) -> str:
    """APP:WORKFLOW -> the registered workflow name (attribute name or registered name)."""
    app, sep, name = target.partition(":")
    if not sep or not app or not name:
        raise ConfigurationError(f"expected APP:WORKFLOW (module:workflow), got {target!r}")
    module = import_app(app)
    attribute = getattr(module, name, None)
    if isinstance(attribute, WorkflowFunction):
        return attribute.name
    if name in workflows:
        return name
    raise UnknownWorkflowError(
        f"{app!r} defines no workflow {name!r} (known: {', '.join(workflows.names()) or 'none'})"
    )


def settings_of(args: argparse.Namespace) -> Settings:
    return Settings.from_env(args.amqp_url, args.redis_url, args.namespace)


# --- process commands --------------------------------------------------------------------


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
            backends.store, backends.broker, local=worker, stall_budget=args.stall_budget
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
        scheduler = Scheduler(backends.store, backends.broker, stall_budget=args.stall_budget)
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
        reconciler = Reconciler(
            backends.store,
            backends.broker,
            lease,
            stale_after=args.stale_after,
            interval=args.interval,
            max_recheck=args.max_recheck,
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


# --- producer and runbook commands ----------------------------------------------------


_JSON_KINDS = {list: "list (array)", dict: "object", object: "value"}


def _json_arg(text: str, what: str, kind: type) -> Any:
    """A JSON command-line argument of the expected kind; bad usage (exit 2) otherwise."""
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise ConfigurationError(f"{what} is not valid JSON: {exc}") from None
    if not isinstance(value, kind):
        raise ConfigurationError(
            f"{what} must be a JSON {_JSON_KINDS[kind]}, got {type(value).__name__}: {text!r}"
        )
    return value


async def cmd_start(args: argparse.Namespace) -> int:
    name = resolve_workflow(args.target)
    call_args = _json_arg(args.args, "--args", list)
    call_kwargs = _json_arg(args.kwargs, "--kwargs", dict)
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


def _event_json(event: Event) -> dict[str, Any]:
    return {
        "id": event.id,
        "type": event.type.value,
        "corr": event.corr,
        "ts": event.ts,
        "v": event.v,
        "data": event.data,
    }


async def _read_run(args: argparse.Namespace) -> list[Event]:
    async with Client.connect(args.amqp_url, args.redis_url, namespace=args.namespace) as client:
        events = await client.events(args.run_id)
    if not events:
        raise RunNotFoundError(args.run_id)
    return events


async def cmd_runs_events(args: argparse.Namespace) -> int:
    events = await _read_run(args)
    if args.json:
        for event in events:
            print(json.dumps(_event_json(event), default=json_default))
    else:
        for event in events:
            print(
                f"{printable(event.id):<18} {event.type.value:<15} {printable(event.corr):<6} "
                f"{printable(repr(event.data))}"
            )
    return EXIT_OK


async def cmd_runs_show(args: argparse.Namespace) -> int:
    events = await _read_run(args)
    state = fold(args.run_id, events)
    rows = timeline(events)
    if args.json:
        print(json.dumps([row.__dict__ for row in rows], default=json_default))
        return EXIT_OK
    print(
        f"run {printable(state.run_id)}  workflow {printable(state.workflow)}  "
        f"status {state.status}"
    )
    print(render([_printable_row(row) for row in rows]))
    if state.status == "completed":
        print(f"result: {printable(repr(state.result))}")
    elif state.error is not None:
        print(f"error: {printable(state.error.type)}: {printable(state.error.message)}")
    return EXIT_OK


def _printable_row(row: TimelineRow) -> TimelineRow:
    """A timeline row whose stored text (step names, errors, results) is terminal-safe."""
    return dataclasses.replace(
        row, entity=printable(row.entity), detail=printable(row.detail), event=printable(row.event)
    )


async def cmd_runs_cancel(args: argparse.Namespace) -> int:
    async with Client.connect(args.amqp_url, args.redis_url, namespace=args.namespace) as client:
        await client.cancel(args.run_id, reason=args.reason)
    if args.json:
        print(json.dumps({"run_id": args.run_id, "status": "cancelled"}))
    else:
        print(f"run {printable(args.run_id)} cancelled")
    return EXIT_OK


async def cmd_hooks_resume(args: argparse.Namespace) -> int:
    payload = _json_arg(args.payload, "--payload", object)
    async with Client.connect(args.amqp_url, args.redis_url, namespace=args.namespace) as client:
        run_id = await client.resume_hook(args.token, payload)
    if args.json:
        print(json.dumps({"token": args.token, "run_id": run_id}))
    else:
        print(f"hook {printable(args.token)} resumed (run {printable(run_id)})")
    return EXIT_OK


async def _runs_to_check(args: argparse.Namespace, store: EventStore) -> list[str]:
    if args.run_id:
        return [args.run_id]
    if not args.all:
        raise ConfigurationError("name a RUN_ID or pass --all")
    found: list[str] = []
    for shard in range(store.names.shards):
        found += [run for run, _ in await store.active_runs(shard, limit=100_000)]
    return found


async def cmd_runs_verify(args: argparse.Namespace) -> int:
    """Exit 0 if every checked run's derived state matches its stream, 1 otherwise."""
    async with connect(settings_of(args)) as backends:
        report = {
            run_id: await verify_run(backends.store, run_id)
            for run_id in await _runs_to_check(args, backends.store)
        }
    return _print_checks(report, args.json, verb="consistent")


async def cmd_runs_repair(args: argparse.Namespace) -> int:
    async with connect(settings_of(args)) as backends:
        report = {
            run_id: await repair_run(backends.store, run_id)
            for run_id in await _runs_to_check(args, backends.store)
        }
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


# --- parser ---------------------------------------------------------------------------------


def add_stall_budget(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--stall-budget",
        type=positive_float,
        default=watchdog.DEFAULT_BUDGET,
        help="seconds workflow code may run without awaiting before its run fails "
        f"(default {watchdog.DEFAULT_BUDGET:g}; scheduler and --with-scheduler)",
    )


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ledgerflow",
        description="Durable, event-sourced workflows on RabbitMQ and Redis.",
        epilog=EXIT_CODES,
    )
    parser.add_argument("--amqp-url", help="RabbitMQ URL (default $LEDGERFLOW_AMQP_URL)")
    parser.add_argument("--redis-url", help="Redis URL (default $LEDGERFLOW_REDIS_URL)")
    parser.add_argument("--namespace", help="key/queue namespace (default $LEDGERFLOW_NAMESPACE)")
    parser.add_argument("--log-level", help="debug, info, warning, error")
    parser.add_argument(
        "--loop",
        choices=LOOPS,
        default="auto",
        help="event loop: uvloop when installed (auto, the default), or force one",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    worker = sub.add_parser("worker", help="run steps from the step queues")
    worker.add_argument("app", help="module defining the workflows and steps")
    worker.add_argument("--concurrency", type=positive_int, default=DEFAULT_CONCURRENCY)
    add_stall_budget(worker)
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
    add_metrics_options(reconciler)
    reconciler.set_defaults(handler=cmd_reconciler)

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

    runs = sub.add_parser("runs", help="inspect runs").add_subparsers(dest="runs", required=True)
    show = runs.add_parser("show", help="a run's timeline")
    show.add_argument("run_id", type=run_id_arg)
    show.add_argument("--json", action="store_true")
    show.set_defaults(handler=cmd_runs_show)
    events = runs.add_parser("events", help="a run's raw events")
    events.add_argument("run_id", type=run_id_arg)
    events.add_argument("--json", action="store_true")
    events.set_defaults(handler=cmd_runs_events)
    cancel = runs.add_parser("cancel", help="cancel a run (and its children)")
    cancel.add_argument("run_id", type=run_id_arg)
    cancel.add_argument("--reason", default="cancelled from the command line")
    cancel.add_argument("--json", action="store_true")
    cancel.set_defaults(handler=cmd_runs_cancel)

    for name, handler, text in (
        ("verify", cmd_runs_verify, "report where derived state disagrees with the stream"),
        ("repair", cmd_runs_repair, "rebuild derived state (hash, indexes) from the stream"),
    ):
        check = runs.add_parser(name, help=text)
        check.add_argument("run_id", nargs="?", type=run_id_arg)
        check.add_argument("--all", action="store_true", help="every unfinished run")
        check.add_argument("--json", action="store_true")
        check.set_defaults(handler=handler)

    hooks = sub.add_parser("hooks", help="durable hooks").add_subparsers(
        dest="hooks", required=True
    )
    resume = hooks.add_parser("resume", help="send a payload to a waiting hook")
    resume.add_argument("token")  # checked by resume_hook: an old hook's token still resumes
    resume.add_argument("--payload", default="null", help="JSON payload")
    resume.add_argument("--json", action="store_true")
    resume.set_defaults(handler=cmd_hooks_resume)
    register_replay(sub, runs)
    register_runs(runs)
    register_dlq(sub)
    register_queues(sub)
    register_dashboard(sub)
    return parser


# Commands that run workflow or step code, where an unknown class must stay an error.
_RUNS_CODE = frozenset({"worker", "scheduler", "reconciler", "replay"})


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    configure_logging(args.log_level)
    if getattr(args, "processes", 1) < 1:
        parser.error("--processes must be at least 1")
    try:
        return _run(args, argv)
    except ServiceUnavailableError as exc:
        return _fail(args, exc, EXIT_UNAVAILABLE)
    except (RunNotFoundError, HookNotFoundError) as exc:
        return _fail(args, exc, EXIT_NOT_FOUND)
    except (ConfigurationError, UnknownWorkflowError, InvalidArgumentError, TypeError) as exc:
        return _fail(args, exc, EXIT_USAGE)
    except LedgerflowError as exc:
        return _fail(args, exc, EXIT_FAILED)
    except KeyboardInterrupt:
        return EXIT_FAILED


def _run(args: argparse.Namespace, argv: list[str]) -> int:
    handler: Callable[[argparse.Namespace], Coroutine[Any, Any, int]] = args.handler
    if getattr(args, "processes", 1) > 1:
        # A broken APP is one error here, not N children failing and being restarted.
        import_app(args.app)
        return asyncio.run(supervise(argv, args.processes))
    if args.command in _RUNS_CODE:
        return run_with_loop(handler(args), args.loop)
    # Read-only tools show objects of classes this process cannot import.
    with codec.inspecting():
        return run_with_loop(handler(args), args.loop)


def _fail(args: argparse.Namespace, exc: BaseException, code: int) -> int:
    """One line on stderr: no URL password, no control character from stored data."""
    settings = settings_of(args)
    text = redact_text(str(exc), [settings.amqp_url, settings.redis_url])
    print(f"ledgerflow: {printable(text)}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
