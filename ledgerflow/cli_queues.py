"""``ledgerflow queues``: depth, consumers and oldest message age per queue of the namespace.

Depth and consumers come from a passive declare. The oldest message's age
needs the head message itself, and there is no safe way to look at it on a
work queue: RabbitMQ's management plugin may be off, quorum queues do not
report ``head_message_timestamp`` (classic queues only), and a basic.get
followed by a requeue raises ``x-delivery-count``, from which workers count a
step's attempts, so peeking would burn one. Work queues therefore show "n/a".
The dead queue has no delivery limit and nobody counts its deliveries, so its
head is read (and given back) and its age is the time since it died.

Without the management API the queues cannot be enumerated either: the fixed
ones (runs, dead, default steps) are always shown, other step queues when
named with ``--queue`` or found in ``--app``'s registered steps.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from broker import Broker
from broker.deadletters import describe
from eventlog.errors import BrokerError
from eventlog.names import DEFAULT_STEP_QUEUE
from worker.backend import connect
from worker.registry import steps

from . import cli
from .cli_format import EXIT_CODES, age, dump, table

NO_PEEK = "n/a: reading the head of a quorum work queue would burn a step attempt"


@dataclass
class QueueRow:
    queue: str
    kind: str
    exists: bool
    depth: int | None
    consumers: int | None
    oldest_ms: int | None
    note: str


async def _dead_head(broker: Broker) -> tuple[int | None, str]:
    """When the dead queue's oldest message died; the note says why if unknown."""
    try:
        async with broker.hold_dead_letters(1) as held:
            letters = [describe(d) for d in held]
    except BrokerError as exc:
        return None, f"n/a: {exc}"
    if not letters:
        return None, ""
    when = letters[0].dead_at_ms or letters[0].published_ms
    return when, "" if when else "n/a: the message carries no time"


async def cmd_queues(args: argparse.Namespace) -> int:
    shorts = [DEFAULT_STEP_QUEUE, *(args.queue or [])]
    if args.app:
        cli.import_app(args.app)
        shorts += steps.queues()
    async with connect(cli.settings_of(args)) as backends:
        broker, names = backends.broker, backends.names
        wanted = [(names.step_queue(q), "steps") for q in dict.fromkeys(shorts)]
        wanted += [(names.runs_queue, "runs"), (names.dead_queue, "dead")]
        rows: list[QueueRow] = []
        for queue, kind in wanted:
            try:
                info = await broker.queue_info(queue)
            except BrokerError as exc:
                rows.append(QueueRow(queue, kind, False, None, None, None, str(exc)))
                continue
            oldest, note = None, NO_PEEK if info.depth else ""
            if kind == "dead" and info.depth:
                oldest, note = await _dead_head(broker)
            rows.append(QueueRow(queue, kind, True, info.depth, info.consumers, oldest, note))
        now = await backends.store.now_ms()
    if args.json:
        dump(
            [
                {
                    "queue": r.queue,
                    "kind": r.kind,
                    "exists": r.exists,
                    "depth": r.depth,
                    "consumers": r.consumers,
                    "oldest_age_s": None if r.oldest_ms is None else (now - r.oldest_ms) / 1000,
                    "note": r.note or None,
                }
                for r in rows
            ]
        )
        return cli.EXIT_OK
    print(
        table(
            ("QUEUE", "KIND", "DEPTH", "CONSUMERS", "OLDEST"),
            [
                (
                    r.queue,
                    r.kind,
                    r.depth if r.exists else "missing",
                    r.consumers if r.exists else "",
                    age(r.oldest_ms, now) if r.oldest_ms else ("n/a" if r.note else ""),
                )
                for r in rows
            ],
        )
    )
    notes = dict.fromkeys(r.note for r in rows if r.note and r.exists)
    for note in notes:
        print(f"OLDEST {note}")
    return cli.EXIT_OK


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the top-level ``queues`` command."""
    queues = sub.add_parser(
        "queues",
        help="depth, consumers and oldest message age per queue",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EXIT_CODES,
    )
    queues.add_argument(
        "--queue", action="append", metavar="NAME", help="also this step queue (short name)"
    )
    queues.add_argument("--app", help="also the step queues of this APP's registered steps")
    queues.add_argument("--json", action="store_true")
    queues.set_defaults(handler=cmd_queues)
