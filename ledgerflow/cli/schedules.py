"""``ledgerflow schedules add | list | pause | resume | delete``: schedules kept in Redis.

Only parsing, wiring and printing live here; the rules are
``scheduler/schedules.py``'s (``build_spec`` checks a definition as ``lf.schedule``
does, and says what is wrong). Schedules added here live only in Redis; those
declared in code are written by the schedulers (the code wins), so ``delete``
refuses one of those without ``--force``. Every command takes ``--json``.
"""

from __future__ import annotations

import argparse
import re
from typing import Any

from ledgerflow.eventlog.errors import SerializationError
from ledgerflow.eventlog.names import check_schedule_name
from ledgerflow.eventlog.schedules import Missed, Schedule, Source, Unreadable
from ledgerflow.scheduler.schedules import (
    add_schedule,
    build_spec,
    find_schedule,
    remove_schedule,
    set_paused,
)
from ledgerflow.worker.backend import connect

from .common import EXIT_CODES, EXIT_OK, json_arg, resolve_workflow, settings_of
from .format import age, dump, iso, iso_json, printable, table

_DURATION = re.compile(r"^\s*([0-9]{1,9})\s*([smhdw]?)\s*\Z")
_UNIT = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 7 * 86_400}


def schedule_name(text: str) -> str:
    """An argparse type: a schedule's name (exit 2 with the rule otherwise)."""
    try:
        return check_schedule_name(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def every_arg(text: str) -> int:
    """An argparse type: whole seconds as ``30s``, ``5m``, ``2h``, ``1d``, ``1w`` or ``90``."""
    match = _DURATION.match(text)
    if match is None:
        raise argparse.ArgumentTypeError(
            f"--every {text[:40]!r}: use whole seconds or a duration like 30s, 5m, 2h, 1d"
        )
    return int(match.group(1)) * _UNIT[match.group(2)]


def missed_arg(text: str) -> Missed:
    try:
        return Missed.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


async def cmd_schedules_add(args: argparse.Namespace) -> int:
    workflow = args.workflow
    if ":" in workflow:  # APP:WORKFLOW: the app is imported, the arguments checked
        workflow = resolve_workflow(workflow)
    spec = build_spec(
        args.name,
        workflow,
        cron=args.cron,
        every=args.every,
        timezone=args.timezone,
        args=json_arg(args.args, "--args", list),
        kwargs=json_arg(args.kwargs, "--kwargs", dict),
        missed=args.missed,
        overlap=args.overlap,
        source=Source.CLI,
    )
    async with connect(settings_of(args)) as backends:
        result = await add_schedule(backends.store, spec, replace=args.replace)
        stored = await find_schedule(backends.store, spec.name)
    if args.json:
        dump({"name": spec.name, "outcome": result.outcome.value, **_json(stored)})
        return EXIT_OK
    print(
        f"schedule {printable(spec.name)} {result.outcome.value}: {printable(spec.when)}, "
        f"next tick {iso(stored.next_ms)}"
    )
    return EXIT_OK


async def cmd_schedules_list(args: argparse.Namespace) -> int:
    """Every schedule of the namespace; an empty list is still a success (exit 0)."""
    async with connect(settings_of(args)) as backends:
        found = await backends.store.read_schedules()
        now = await backends.store.now_ms()
    if args.json:
        dump([_json(s) if isinstance(s, Schedule) else _unreadable(s) for s in found])
        return EXIT_OK
    if not found:
        print("no schedules")
        return EXIT_OK
    heads = (
        "NAME",
        "WORKFLOW",
        "WHEN",
        "STATE",
        "NEXT TICK (UTC)",
        "LAST TICK",
        "OUTCOME",
        "LAST RUN",
        "RUNS",
        "MISSED",
        "SKIPPED",
        "FROM",
    )
    rows: list[tuple[object, ...]] = []
    for s in found:
        if isinstance(s, Unreadable):
            rows.append((s.name, "", f"unreadable: {s.error}", *("",) * 9))
            continue
        rows.append(
            (
                s.name,
                s.spec.workflow,
                s.spec.when,
                "paused" if s.paused else "active",
                "" if s.paused else iso(s.next_ms),
                f"{age(s.last_tick_ms, now)} ago" if s.last_tick_ms else "",
                s.last_outcome.value if s.last_outcome else "",
                s.last_run or "",
                s.runs,
                s.missed,
                s.overlapped,
                s.spec.source.value,
            )
        )
    print(table(heads, rows))
    return EXIT_OK


async def cmd_schedules_pause(args: argparse.Namespace) -> int:
    return await _pause(args, paused=True)


async def cmd_schedules_resume(args: argparse.Namespace) -> int:
    return await _pause(args, paused=False)


async def _pause(args: argparse.Namespace, *, paused: bool) -> int:
    async with connect(settings_of(args)) as backends:
        changed = await set_paused(backends.store, args.name, paused=paused)
        stored = await find_schedule(backends.store, args.name)
    word = "paused" if paused else "resumed"
    if args.json:
        dump({"name": args.name, "changed": changed, **_json(stored)})
    elif changed:
        after = "" if paused else f", next tick {iso(stored.next_ms)}"
        print(f"schedule {printable(args.name)} {word}{after}")
    else:
        print(f"schedule {printable(args.name)} was already {'paused' if paused else 'active'}")
    return EXIT_OK


async def cmd_schedules_delete(args: argparse.Namespace) -> int:
    async with connect(settings_of(args)) as backends:
        await remove_schedule(backends.store, args.name, force=args.force)
    if args.json:
        dump({"name": args.name, "deleted": True})
    else:
        print(f"schedule {printable(args.name)} deleted (the runs it started are kept)")
    return EXIT_OK


def _json(s: Schedule) -> dict[str, Any]:
    spec = s.spec
    try:
        call_args, call_kwargs = spec.arguments()
        arguments: dict[str, Any] = {"args": call_args, "kwargs": call_kwargs}
    except SerializationError as exc:
        arguments = {"args": None, "kwargs": None, "arguments_error": str(exc)}
    return {
        "name": spec.name,
        "workflow": spec.workflow,
        **arguments,
        "cron": spec.cron or None,
        "timezone": spec.timezone if spec.cron else None,
        "every_seconds": spec.every_s or None,
        "missed": spec.missed.text,
        "overlap": spec.overlap.value,
        "source": spec.source.value,
        "paused": s.paused,
        "next_tick": None if s.paused else iso_json(s.next_ms),
        "next_tick_ms": None if s.paused else s.next_ms,
        "last_tick": iso_json(s.last_tick_ms),
        "last_tick_ms": s.last_tick_ms,
        "last_outcome": s.last_outcome.value if s.last_outcome else None,
        "last_run": s.last_run,
        "last_acted": iso_json(s.acted_ms),
        "lag_ms": s.acted_ms - s.last_tick_ms if s.acted_ms and s.last_tick_ms else None,
        "runs": s.runs,
        "missed_ticks": s.missed,
        "newest_missed_tick": iso_json(s.missed_tick_ms),
        "skipped_overlap": s.overlapped,
        "created": iso_json(s.created_ms),
        "updated": iso_json(s.updated_ms),
    }


def _unreadable(s: Unreadable) -> dict[str, Any]:
    return {"name": s.name, "error": s.error}


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``schedules`` and its subcommands to the top-level commands."""
    group = sub.add_parser("schedules", help="schedules: runs started by cron or interval")
    commands = group.add_subparsers(dest="schedules", required=True)

    add = commands.add_parser(
        "add",
        help="add a schedule (kept in Redis; fired by every scheduler)",
        description="Start a run of a workflow at each tick of a cron expression (in a "
        "time zone) or of an interval. Runs are named sched:NAME:<tick in UTC>.",
        epilog=EXIT_CODES + " (1 also if the name is taken and --replace is not given)",
    )
    add.add_argument("name", type=schedule_name, metavar="NAME")
    add.add_argument(
        "--workflow",
        required=True,
        metavar="APP:WORKFLOW|NAME",
        help="the workflow: APP:WORKFLOW imports APP and checks the arguments against it; "
        "a bare name is taken as registered",
    )
    when = add.add_mutually_exclusive_group(required=True)
    when.add_argument("--cron", metavar="EXPR", help="e.g. '0 3 * * *', '*/15 * * * * *', @daily")
    when.add_argument(
        "--every", type=every_arg, metavar="DURATION", help="e.g. 30s, 5m, 2h, 1d (whole seconds)"
    )
    add.add_argument("--timezone", metavar="TZ", help="IANA zone of --cron (default UTC)")
    add.add_argument("--args", default="[]", help="JSON list of positional arguments")
    add.add_argument("--kwargs", default="{}", help="JSON object of keyword arguments")
    add.add_argument(
        "--missed",
        type=missed_arg,
        default=Missed(),
        metavar="skip|catch-up:N",
        help="ticks missed while no scheduler ran: skip (default: only the newest, if at "
        "most a minute late) or catch up the newest N (at most 100)",
    )
    add.add_argument(
        "--overlap",
        choices=("skip", "allow"),
        default="skip",
        help="a tick while the previous tick's run still goes: skip it (default) or start it",
    )
    add.add_argument(
        "--replace", action="store_true", help="overwrite a schedule of this name if one exists"
    )
    add.add_argument("--json", action="store_true")
    add.set_defaults(handler=cmd_schedules_add)

    listing = commands.add_parser(
        "list", help="every schedule: next and last tick, last run, counts", epilog=EXIT_CODES
    )
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(handler=cmd_schedules_list)

    for verb, handler, text in (
        ("pause", cmd_schedules_pause, "stop firing a schedule (kept across deploys)"),
        ("resume", cmd_schedules_resume, "fire again from the next tick (no catch-up)"),
    ):
        command = commands.add_parser(verb, help=text, epilog=EXIT_CODES)
        command.add_argument("name", type=schedule_name, metavar="NAME")
        command.add_argument("--json", action="store_true")
        command.set_defaults(handler=handler)

    delete = commands.add_parser(
        "delete",
        help="delete a schedule (the runs it started are kept)",
        epilog=EXIT_CODES + " (2 also for a schedule declared in code, without --force)",
    )
    delete.add_argument("name", type=schedule_name, metavar="NAME")
    delete.add_argument(
        "--force",
        action="store_true",
        help="delete one declared in code too (the next scheduler to start writes it back)",
    )
    delete.add_argument("--json", action="store_true")
    delete.set_defaults(handler=cmd_schedules_delete)
