"""``ledgerflow dlq list / show / requeue / purge``: the dead queue, without losing a message.

Reading goes through ``Broker.hold_dead_letters``: messages are taken unsettled
on a channel of their own and given back in their order, so a listing changes
nothing but the dead queue's own delivery counter (which nobody reads, and
which a requeue strips). Requeue is ``broker.deadletters.requeue``: the copy
to the original queue is confirmed before the dead one is acked. Messages are
addressed by message id (step messages: ``run:step:attempt``).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Any

from ledgerflow.broker import Broker, StepMessage
from ledgerflow.broker.deadletters import DeadLetter, describe, requeue
from ledgerflow.eventlog.errors import BrokerError, MalformedMessageError, PayloadTooLargeError
from ledgerflow.worker.backend import connect

from .args import bounded_count
from .common import (
    EXIT_CODES,
    EXIT_FAILED,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_USAGE,
    settings_of,
)
from .format import (
    Progress,
    dump,
    iso,
    iso_json,
    printable,
    table,
)


async def _depth(broker: Broker) -> int:
    return (await broker.queue_info(broker.names.dead_queue)).depth


async def cmd_dlq_list(args: argparse.Namespace) -> int:
    async with connect(settings_of(args)) as backends:
        broker = backends.broker
        depth = await _depth(broker)
        async with broker.hold_dead_letters(min(depth, args.limit)) as held:
            letters = [describe(d) for d in held]
    if args.json:
        dump({"depth": depth, "messages": [_letter_json(x, full=False) for x in letters]})
        return EXIT_OK
    if not letters:
        print(f"dead queue {backends.names.dead_queue} is empty")
        return EXIT_OK
    print(
        table(
            ("#", "ID", "QUEUE", "REASON", "DEAD AT (UTC)", "KIND", "RUN", "STEP"),
            [
                (i, x.id, x.queue, x.reason, iso(x.dead_at_ms), x.kind, x.run_id, x.step)
                for i, x in enumerate(letters, start=1)
            ],
        )
    )
    if depth > len(letters):
        print(f"(first {len(letters)} of {depth}; --limit for more)")
    return EXIT_OK


async def cmd_dlq_show(args: argparse.Namespace) -> int:
    """Every dead message with this id, decoded: headers, then the body's fields or hex."""
    async with connect(settings_of(args)) as backends:
        broker = backends.broker
        async with broker.hold_dead_letters(await _depth(broker)) as held:
            letters = [x for x in map(describe, held) if x.id == args.id]
    if not letters:
        return _not_found(args.id)
    if args.json:
        dump([_letter_json(x, full=True) for x in letters])
        return EXIT_OK
    for letter in letters:
        _print_letter(letter)
    return EXIT_OK


async def cmd_dlq_requeue(args: argparse.Namespace) -> int:
    """Back to the original queue: exit 1 if any could not be republished (they stay dead)."""
    if bool(args.ids) == bool(args.all):
        print("ledgerflow: name message ID(s) or pass --all (not both)", file=sys.stderr)
        return EXIT_USAGE
    wanted = set(args.ids)
    requeued: list[DeadLetter] = []
    failed: dict[str, str] = {}
    async with connect(settings_of(args)) as backends:
        broker = backends.broker
        async with broker.hold_dead_letters(await _depth(broker)) as held:
            chosen = [(d, describe(d)) for d in held]
            chosen = [(d, x) for d, x in chosen if args.all or x.id in wanted]
            progress = Progress(len(chosen), "requeue")
            try:
                for delivery, letter in chosen:
                    try:
                        await requeue(broker, delivery, letter)
                    except (BrokerError, MalformedMessageError, PayloadTooLargeError) as exc:
                        # Not acked, so it goes back to the dead queue with the rest.
                        failed[letter.id] = str(exc)
                    else:
                        requeued.append(letter)
                    progress.advance()
            finally:
                progress.close()
    found = {x.id for x in requeued} | set(failed)
    missing = sorted(wanted - found)
    if args.json:
        dump(
            {
                "requeued": [{"id": x.id, "queue": x.queue} for x in requeued],
                "failed": failed,
                "not_found": missing,
            }
        )
    else:
        for letter in requeued:
            print(f"requeued {printable(letter.id)} to {printable(letter.queue)}")
        for key, error in failed.items():
            print(
                f"ledgerflow: {printable(key)} stays in the dead queue: {printable(error)}",
                file=sys.stderr,
            )
        for key in missing:
            print(f"ledgerflow: no dead message {printable(repr(key))}", file=sys.stderr)
        if args.all and not chosen:
            print("dead queue is empty")
    if failed:
        return EXIT_FAILED
    return EXIT_NOT_FOUND if missing else EXIT_OK


async def cmd_dlq_purge(args: argparse.Namespace) -> int:
    if not args.yes:
        print(
            "ledgerflow: refusing to drop every dead message without --yes "
            "(look first: `ledgerflow dlq list`; keep some: `ledgerflow dlq requeue ID`)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    async with connect(settings_of(args)) as backends:
        dropped = await backends.broker.purge(backends.names.dead_queue)
    if args.json:
        dump({"purged": dropped})
    else:
        print(f"purged {dropped} message(s) from {backends.names.dead_queue}")
    return EXIT_OK


def _not_found(key: str) -> int:
    print(
        f"ledgerflow: no dead message {printable(repr(key))} (ids as in `ledgerflow dlq list`)",
        file=sys.stderr,
    )
    return EXIT_NOT_FOUND


def _letter_json(letter: DeadLetter, *, full: bool) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": letter.id,
        "queue": letter.queue,
        "reason": letter.reason,
        "dead_at": iso_json(letter.dead_at_ms),
        "dead_at_ms": letter.dead_at_ms,
        "published_at": iso_json(letter.published_ms),
        "kind": letter.kind,
        "run_id": letter.run_id,
        "step": letter.step,
    }
    if full:
        out["headers"] = letter.headers
        out["message"] = dataclasses.asdict(letter.message) if letter.message is not None else None
        out["decode_error"] = letter.decode_error or None
        out["body_hex"] = letter.body.hex()
    return out


def _print_letter(letter: DeadLetter) -> None:
    """Every field a dead message carries, each made terminal-safe: all of it is hostile."""
    print(f"message {printable(letter.id)}")
    for label, value in (
        ("original queue", letter.queue),
        ("reason", letter.reason),
        ("dead at", iso(letter.dead_at_ms)),
        ("published at", iso(letter.published_ms)),
        ("kind", letter.kind),
        ("run", letter.run_id),
        ("step", letter.step),
    ):
        if value:
            print(f"  {label + ':':<16}{printable(value)}")
    print("  headers:")
    for key, value in sorted(letter.headers.items(), key=lambda item: str(item[0])):
        print(f"    {printable(key)}: {printable(repr(value))}")
    if letter.message is not None:
        print("  body (decoded):")
        for field in dataclasses.fields(letter.message):
            value = getattr(letter.message, field.name)
            if isinstance(letter.message, StepMessage) and field.name == "args":
                value = f"<{len(value)} bytes> {value.hex()[:64]}"
            print(f"    {field.name}: {printable(value)}")
    else:
        print(
            f"  body ({len(letter.body)} bytes, not a ledgerflow message: "
            f"{printable(letter.decode_error)})"
        )
        print(f"    {letter.body.hex()}")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``dlq`` with ``list``, ``show``, ``requeue`` and ``purge``."""
    dlq = sub.add_parser(
        "dlq", help="the dead-letter queue: poison messages", epilog=EXIT_CODES
    ).add_subparsers(dest="dlq", required=True)

    listing = dlq.add_parser("list", help="dead messages, oldest first", epilog=EXIT_CODES)
    listing.add_argument("--limit", type=bounded_count, default=100, help="at most 10000")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(handler=cmd_dlq_list)

    show = dlq.add_parser("show", help="one dead message, decoded", epilog=EXIT_CODES)
    show.add_argument("id", metavar="ID", help="message id as `dlq list` shows it")
    show.add_argument("--json", action="store_true")
    show.set_defaults(handler=cmd_dlq_show)

    again = dlq.add_parser(
        "requeue",
        help="republish to the original queue (confirmed), then remove from the dead queue",
        epilog=EXIT_CODES,
    )
    again.add_argument("ids", nargs="*", metavar="ID")
    again.add_argument("--all", action="store_true", help="every dead message")
    again.add_argument("--json", action="store_true")
    again.set_defaults(handler=cmd_dlq_requeue)

    purge = dlq.add_parser("purge", help="drop every dead message (needs --yes)", epilog=EXIT_CODES)
    purge.add_argument("--yes", action="store_true", help="yes, drop them for good")
    purge.add_argument("--json", action="store_true")
    purge.set_defaults(handler=cmd_dlq_purge)
