"""``ledgerflow runs ...``: what happened to a run, and pushing it along.

Only parsing, wiring and printing live here. ``show`` and ``events`` read the
run's log, listing reads the runs index (``RunIndex.list_runs``), ``state``
folds a prefix of the log with the one fold every view uses, and ``redrive`` is
``Reconciler.redrive``, so the command re-enqueues exactly what the reconciler
would, just without waiting. ``export`` lives with ``replay``, ``verify`` and
``repair`` in ``consistency``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from typing import Any

from ledgerflow.eventlog.errors import RunNotFoundError
from ledgerflow.eventlog.events import Event
from ledgerflow.eventlog.fold import ErrorInfo, RunState, fold
from ledgerflow.eventlog.kinds import RunStatus
from ledgerflow.eventlog.store import RunLog
from ledgerflow.ops.backlog import entry_ms
from ledgerflow.ops.timeline import TimelineRow, render, timeline
from ledgerflow.scheduler.archive import read_archive
from ledgerflow.scheduler.chains import successors
from ledgerflow.scheduler.client import Client
from ledgerflow.scheduler.history import HistoryError
from ledgerflow.scheduler.reconciler import DEFAULT_STALE_AFTER, Reconciler, Recovery
from ledgerflow.worker.backend import connect

from .args import bounded_count, non_negative_float, run_id_arg, since_arg
from .common import EXIT_CODES, EXIT_NOT_FOUND, EXIT_OK, EXIT_USAGE, settings_of
from .format import Progress, age, dump, iso, iso_json, json_default, printable, table

STATUSES = tuple(status.value for status in RunStatus)


def _event_json(event: Event) -> dict[str, Any]:
    return {**event.envelope(), "data": event.data}


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
    """The timeline of a run in Redis, or (``--archive FILE``) of an archived one."""
    if bool(args.run_id) == bool(args.archive):
        print("ledgerflow: name a RUN_ID or pass --archive FILE (not both)", file=sys.stderr)
        return EXIT_USAGE
    if args.archive:
        try:
            history = await read_archive(args.archive)
        except HistoryError as exc:
            print(f"ledgerflow: {printable(exc)}", file=sys.stderr)
            return EXIT_USAGE
        return _show(history.run_id or "?", list(history), as_json=args.json)
    return _show(args.run_id, await _read_run(args), as_json=args.json)


def _show(run_id: str, events: list[Event], *, as_json: bool) -> int:
    state = fold(run_id, events)
    rows = timeline(events)
    if as_json:
        print(json.dumps([row.__dict__ for row in rows], default=json_default))
        return EXIT_OK
    print(
        f"run {printable(state.run_id)}  workflow {printable(state.workflow)}  "
        f"status {state.status}"
    )
    if state.continued_from is not None:
        print(f"continued from: {printable(state.continued_from)}")
    if state.schedule is not None:
        print(
            f"started by schedule {printable(state.schedule.name)} "
            f"for its tick at {iso(state.schedule.tick_ms)}"
        )
    print(render([_printable_row(row) for row in rows]))
    if state.continued_as is not None:
        print(f"continued as: {printable(state.continued_as)} (lf.continue_as_new)")
    elif state.status == "completed":
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


async def cmd_runs_list(args: argparse.Namespace) -> int:
    """The newest runs first; an empty listing is still a success (exit 0)."""
    async with connect(settings_of(args)) as backends:
        runs = await backends.store.list_runs(
            status=args.status, workflow=args.workflow, since_ms=args.since, limit=args.limit
        )
        now = await backends.store.now_ms()
        continued = await successors(backends.store, [r.run_id for r in runs])
    if args.json:
        dump(
            [
                {
                    "run_id": r.run_id,
                    "workflow": r.workflow,
                    "status": r.status,
                    "created": iso_json(r.created_ms),
                    "updated": iso_json(r.updated_ms),
                    "created_ms": r.created_ms,
                    "updated_ms": r.updated_ms,
                    "events": r.events,
                    "continued_as": continued.get(r.run_id),
                }
                for r in runs
            ]
        )
        return EXIT_OK
    if not runs:
        print("no runs match")
        return EXIT_OK
    heads: tuple[str, ...] = (
        "RUN ID",
        "WORKFLOW",
        "STATUS",
        "CREATED (UTC)",
        "LAST EVENT",
        "EVENTS",
    )
    rows: list[tuple[object, ...]] = [
        (
            r.run_id,
            r.workflow,
            r.status,
            iso(r.created_ms),
            f"{age(r.updated_ms, now)} ago",
            r.events,
        )
        for r in runs
    ]
    if continued:  # the chain links of lf.continue_as_new, only when there are any
        heads += ("CONTINUED AS",)
        rows = [(*row, continued.get(r.run_id, "")) for row, r in zip(rows, runs, strict=True)]
    print(table(heads, rows))
    if len(runs) == args.limit:
        print(f"(first {args.limit}; --limit for more)")
    return EXIT_OK


async def cmd_runs_state(args: argparse.Namespace) -> int:
    """The run as of event N: the fold of the log's first N entries (the audit trail)."""
    async with connect(settings_of(args)) as backends:
        events = await backends.store.read(args.run_id)
    if not events:
        raise RunNotFoundError(args.run_id)
    at = len(events) if args.at is None else args.at
    if not 1 <= at <= len(events):
        print(
            f"ledgerflow: --at {at} is out of range: run {printable(repr(args.run_id))} has "
            f"{len(events)} events, numbered 1..{len(events)} as in `runs show`",
            file=sys.stderr,
        )
        return EXIT_USAGE
    state = fold(args.run_id, events[:at])
    last = events[at - 1]
    if args.json:
        dump(_state_json(state, at, len(events), last.type.value, last.ts))
        return EXIT_OK
    print(
        f"run {printable(state.run_id)}  workflow {printable(state.workflow)}  "
        f"status {state.status}  "
        f"as of event {at}/{len(events)} ({last.type.value} at {iso(last.ts)})"
    )
    if state.status == "completed":
        print(f"result: {printable(repr(state.result))}")
    elif state.error is not None:
        print(f"error: {printable(_error(state.error))}")
    elif state.cancel_reason is not None:
        print(f"cancelled: {printable(state.cancel_reason)}")
    rows: list[tuple[Any, ...]] = []
    for step in state.steps.values():
        outcome = _error(step.error) if step.error else ""
        if step.status == "completed":
            outcome = f"-> {step.result!r}"
        rows.append(("step", step.id, step.name, step.status, step.attempt or "", outcome))
    for wait in state.waits.values():
        what = {"start": "start time, ", "deadline": "deadline, "}.get(wait.purpose, "")
        rows.append(("wait", wait.id, f"{what}until {iso(wait.due)}", wait.status, "", ""))
    for hook in state.hooks.values():
        rows.append(("hook", hook.id, hook.token, hook.status, "", f"{hook.received} payload(s)"))
    if rows:
        print(table(("KIND", "ID", "NAME", "STATUS", "ATTEMPT", "RESULT / ERROR"), rows))
    return EXIT_OK


def _error(error: ErrorInfo) -> str:
    return f"{error.type}: {error.message}"


def _error_json(error: ErrorInfo | None) -> dict[str, str] | None:
    if error is None:
        return None
    return {"type": error.type, "message": error.message, "traceback": error.traceback}


def _state_json(state: RunState, at: int, total: int, event: str, ts: int) -> dict[str, Any]:
    return {
        "run_id": state.run_id,
        "workflow": state.workflow,
        "status": state.status,
        "at": at,
        "events": total,
        "event": event,
        "ts": ts,
        "result": state.result,
        "error": _error_json(state.error),
        "cancel_reason": state.cancel_reason,
        "steps": [
            {
                "id": s.id,
                "name": s.name,
                "queue": s.queue,
                "status": s.status,
                "attempt": s.attempt,
                "result": s.result,
                "error": _error_json(s.error),
                "child_run_id": s.child_run_id,
            }
            for s in state.steps.values()
        ],
        "waits": [
            {"id": w.id, "due": w.due, "status": w.status, "purpose": w.purpose or None}
            for w in state.waits.values()
        ],
        "hooks": [
            {"id": h.id, "token": h.token, "status": h.status, "received": h.received}
            for h in state.hooks.values()
        ],
    }


async def _stuck_runs(store: RunLog, stale_after: float) -> list[str]:
    """Unfinished runs whose log has not moved for ``stale_after`` seconds.

    Read from each run's last entry, not from the active index's score, which
    the reconciler pushes later after each check.
    """
    cutoff = await store.now_ms() - int(stale_after * 1000)
    stuck: list[str] = []
    for shard in range(store.names.shards):
        run_ids = [run for run, _ in await store.active_runs(shard, limit=100_000)]
        for run_id, (_, last) in zip(run_ids, await store.run_tails(run_ids), strict=True):
            if last and entry_ms(last) <= cutoff:
                stuck.append(run_id)
    return stuck


async def cmd_runs_redrive(args: argparse.Namespace) -> int:
    """Re-enqueue what each run is missing and force an activation; exit 4 if a run is unknown."""
    if bool(args.run_ids) == bool(args.all_stuck):
        print("ledgerflow: name RUN_ID(s) or pass --all-stuck (not both)", file=sys.stderr)
        return EXIT_USAGE
    async with connect(settings_of(args)) as backends:
        store = backends.store
        run_ids: list[str] = list(dict.fromkeys(args.run_ids))
        if args.all_stuck:
            run_ids += await _stuck_runs(store, args.stale_after)
        reconciler = Reconciler(store, backends.broker, None, stale_after=args.stale_after)
        done: dict[str, list[Recovery]] = {}
        missing: list[str] = []
        progress = Progress(len(run_ids), "redrive")
        try:
            for run_id in run_ids:
                actions = await reconciler.redrive(run_id)
                if actions is None:
                    missing.append(run_id)
                else:
                    done[run_id] = actions
                progress.advance()
        finally:
            progress.close()
    if args.json:
        dump(
            {
                "runs": {
                    run_id: [{"entity": a.entity, "reason": a.reason} for a in actions]
                    for run_id, actions in done.items()
                },
                "not_found": missing,
            }
        )
    else:
        for run_id, actions in done.items():
            if not actions:
                print(f"{printable(run_id)}: finished, nothing to re-enqueue")
                continue
            print(f"{printable(run_id)}:")
            for action in actions:
                print(f"  re-enqueued {printable(action.entity)}: {printable(action.reason)}")
        for run_id in missing:
            print(f"{printable(run_id)}: no such run", file=sys.stderr)
        if args.all_stuck and not run_ids:
            print(f"no unfinished run without progress for {args.stale_after:g}s")
    return EXIT_NOT_FOUND if missing else EXIT_OK


def add_group(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
) -> argparse._SubParsersAction[argparse.ArgumentParser]:
    """Add ``runs`` with ``show``, ``events`` and ``cancel``; its subcommands, for the rest."""
    runs = sub.add_parser("runs", help="inspect runs").add_subparsers(dest="runs", required=True)
    show = runs.add_parser("show", help="a run's timeline", epilog=EXIT_CODES)
    show.add_argument("run_id", nargs="?", type=run_id_arg)
    show.add_argument(
        "--archive",
        metavar="FILE",
        help="show an archived run instead: a file from `runs archive` or `runs export` "
        "(or s3://BUCKET/PREFIX/RUN.jsonl.gz)",
    )
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
    return runs


def register(runs: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``list``, ``state`` and ``redrive`` to ``ledgerflow runs``."""
    listing = runs.add_parser("list", help="runs, newest first, filtered", epilog=EXIT_CODES)
    listing.add_argument("--status", choices=STATUSES)
    listing.add_argument("--workflow", help="registered workflow name")
    listing.add_argument(
        "--since", type=since_arg, help="created since: 15m, 2h, 3d, 1w or an ISO time (UTC)"
    )
    listing.add_argument(
        "--limit", type=bounded_count, default=50, help="at most 10000 (a page of the index)"
    )
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(handler=cmd_runs_list)

    state = runs.add_parser(
        "state",
        help="the run's state as of event N (steps, waits, hooks): the audit trail",
        epilog=EXIT_CODES,
    )
    state.add_argument("run_id", type=run_id_arg)
    state.add_argument(
        "--at", type=int, metavar="N", help="fold only events 1..N (numbers as in `runs show`)"
    )
    state.add_argument("--json", action="store_true")
    state.set_defaults(handler=cmd_runs_state)

    redrive = runs.add_parser(
        "redrive",
        help="force an activation and re-enqueue what a run is missing",
        description=(
            "For each run: re-send step messages for steps created but never started and "
            "retries that are due, re-arm missing timers, and send an activation so a "
            "scheduler replays it now. Harmless to repeat; a step still queued may run twice "
            "(steps are at-least-once)."
        ),
        epilog=EXIT_CODES,
    )
    redrive.add_argument("run_ids", nargs="*", metavar="RUN_ID", type=run_id_arg)
    redrive.add_argument(
        "--all-stuck",
        action="store_true",
        help="every unfinished run without progress for --stale-after seconds",
    )
    redrive.add_argument("--stale-after", type=non_negative_float, default=DEFAULT_STALE_AFTER)
    redrive.add_argument("--json", action="store_true")
    redrive.set_defaults(handler=cmd_runs_redrive)
