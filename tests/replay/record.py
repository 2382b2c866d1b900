"""Re-record the golden histories: ``python -m tests.replay.record``.

Runs the example workflows embedded (in memory, no servers needed) and writes
each run's log as ``tests/replay/<name>.jsonl``. Re-record only on purpose: a
golden is the memory of how runs made by older code look, and the point of
test_golden.py is that today's code must still replay them. Commit the new
files with the change that made them necessary, and keep the old ones if runs
recorded by the old code may still be in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ledgerflow.eventlog.errors import WorkflowFailedError
from ledgerflow.scheduler.embedded import embedded
from ledgerflow.scheduler.history import dump_history
from ledgerflow.scheduler.registry import WorkflowFunction

from examples.orders import process_order
from ledgerflow.ops.logs import configure_logging
from tests.apps import chains

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Golden:
    name: str
    workflow: WorkflowFunction[Any, Any]
    args: tuple[Any, ...]
    # A fixed run id: lf.uuid4() and lf.random() are seeded by it.
    run_id: str


GOLDENS = [
    Golden("orders_ok", process_order, ("order-1", ["apple", "pear"]), "golden-orders-ok"),
    # An unknown item: reserve_stock raises FatalError, so the run ends in run_failed.
    Golden(
        "orders_unknown_item",
        process_order,
        ("order-2", ["apple", "kiwi"]),
        "golden-orders-unknown-item",
    ),
]
CHAINS = HERE / "chains"
"""Goldens of lf.continue_as_new chains (newer logs: kept apart from the old-format ones)."""
CHAIN_GOLDENS = [
    # A poller that continues as new after two polls: the log's end names its successor.
    Golden("poller_continued", chains.poller, (5, 2), "golden-poller"),
]


async def record(golden: Golden, directory: Path = HERE) -> Path:
    """Run one golden's workflow embedded and write its log; returns the file written."""
    async with embedded(f"golden-{golden.name}") as client:
        run = await client.start(golden.workflow, *golden.args, run_id=golden.run_id)
        # A failing run is as good a golden as a completing one.
        with contextlib.suppress(WorkflowFailedError):
            await run.result(timeout=30)
        events = await client.events(run.run_id)
    path = directory / f"{golden.name}.jsonl"
    dump_history(events, path, run_id=run.run_id)
    return path


async def main() -> int:
    configure_logging("warning")
    for golden in GOLDENS:
        path = await record(golden)
        print(f"wrote {path}")
    for golden in CHAIN_GOLDENS:
        path = await record(golden, CHAINS)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
