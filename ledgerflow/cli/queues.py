"""``ledgerflow queues``: depth, consumers and oldest waiting work per queue of the namespace.

Depth and consumers come from a passive declare. The age of a work queue's
oldest message cannot be read from the queue: RabbitMQ's management plugin may
be off, quorum queues do not report ``head_message_timestamp`` (classic queues
only), and a basic.get followed by a requeue raises ``x-delivery-count``, from
which workers count a step's attempts, so peeking would burn one. So OLDEST of
a step queue and of the runs queue comes from the event log, the source of
truth (``ops.backlog``): for a step queue, the oldest step of that queue
that is created and not yet started; for the runs queue, the oldest outcome (or
new run) no scheduler has acted on yet. That is what an operator wants to know
anyway, and it stays right when a message was lost. The scan reads at most
``--max-runs`` active runs, and says so when it stopped there. Step queues the
log shows waiting work for are listed even when not named.

The dead queue has no delivery limit and nobody counts its deliveries, so its
head is read (and given back) and its age is the time since it died.

Without the management API the queues cannot be enumerated either: the fixed
ones (runs, dead, default steps) are always shown, other step queues when
named with ``--queue``, found in ``--app``'s registered steps, or holding
waiting steps in the log.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from ledgerflow.broker import Broker
from ledgerflow.broker.deadletters import describe
from ledgerflow.eventlog.errors import BrokerError
from ledgerflow.eventlog.names import DEFAULT_STEP_QUEUE
from ledgerflow.ops.backlog import DEFAULT_MAX_RUNS, Backlog, oldest_waiting
from ledgerflow.worker.backend import connect
from ledgerflow.worker.registry import steps

from .common import EXIT_CODES, EXIT_OK, import_app, settings_of
from .format import age, dump, printable, table

FROM_LOG = (
    "OLDEST of step and runs queues is from the event log: steps created and not yet"
    " started, outcomes no scheduler has acted on"
)


@dataclass
class QueueRow:
    queue: str
    kind: str
    exists: bool
    depth: int | None
    consumers: int | None
    oldest_ms: int | None
    note: str
    # Where oldest_ms came from: "log" (work queues) or "queue" (the dead queue's head).
    source: str = "log"


def _scan_note(backlog: Backlog) -> str:
    """Why a log-derived age may be short of the truth; "" when the scan saw every run."""
    if not backlog.truncated:
        return ""
    return f"scan stopped at {backlog.runs_scanned} active runs: OLDEST is over those only"


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
        import_app(args.app)
        shorts += steps.queues()
    async with connect(settings_of(args)) as backends:
        broker, names = backends.broker, backends.names
        backlog = await oldest_waiting(backends.store, max_runs=args.max_runs)
        scan_note = _scan_note(backlog)
        # Queues with waiting steps are shown even if not asked for: they need a worker.
        shorts += sorted(backlog.steps)
        wanted = [
            (names.step_queue(q), "steps", backlog.steps.get(q)) for q in dict.fromkeys(shorts)
        ]
        wanted += [(names.runs_queue, "runs", backlog.runs), (names.dead_queue, "dead", None)]
        rows: list[QueueRow] = []
        for queue, kind, logged in wanted:
            source = "queue" if kind == "dead" else "log"
            try:
                info = await broker.queue_info(queue)
            except BrokerError as exc:
                row = QueueRow(queue, kind, False, None, None, logged, str(exc), source)
                rows.append(row)
                continue
            oldest, note = logged, scan_note
            if kind == "dead":
                oldest, note = await _dead_head(broker) if info.depth else (None, "")
            rows.append(
                QueueRow(queue, kind, True, info.depth, info.consumers, oldest, note, source)
            )
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
                    "oldest_age_s": (
                        None if r.oldest_ms is None else max(0, now - r.oldest_ms) / 1000
                    ),
                    "source": r.source,
                    "note": r.note or None,
                }
                for r in rows
            ]
        )
        return EXIT_OK
    print(
        table(
            ("QUEUE", "KIND", "DEPTH", "CONSUMERS", "OLDEST"),
            [
                (
                    r.queue,
                    r.kind,
                    r.depth if r.exists else "missing",
                    r.consumers if r.exists else "",
                    _oldest_cell(r, now),
                )
                for r in rows
            ],
        )
    )
    print(FROM_LOG)
    notes = dict.fromkeys(r.note for r in rows if r.note and r.exists)
    for note in notes:
        print(f"OLDEST {printable(note)}")
    return EXIT_OK


def _oldest_cell(row: QueueRow, now: int) -> str:
    """The age; "n/a" only where the dead queue's head could not be dated, else blank."""
    if row.oldest_ms:
        return age(row.oldest_ms, now)
    return "n/a" if row.source == "queue" and row.note else ""


def _positive(text: str) -> int:
    """An argparse type: a count of at least 1 (argparse turns ValueError into exit 2)."""
    value = int(text)
    if value < 1:
        raise ValueError(text)
    return value


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
    queues.add_argument(
        "--max-runs",
        type=_positive,
        default=DEFAULT_MAX_RUNS,
        metavar="N",
        help=f"read at most N active runs for the ages (default {DEFAULT_MAX_RUNS})",
    )
    queues.add_argument("--json", action="store_true")
    queues.set_defaults(handler=cmd_queues)
