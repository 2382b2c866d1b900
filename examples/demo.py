"""`make demo`: the order workflow through a real worker and a real scheduler process.

Starts `ledgerflow worker` and `ledgerflow scheduler` as separate OS processes,
starts one order run, waits for it and prints its timeline. Without reachable
servers it says so and runs the same workflow embedded, in memory.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import uuid

from ledgerflow.eventlog.errors import ServiceUnavailableError
from ledgerflow.eventlog.fold import fold
from ledgerflow.eventlog.settings import Settings
from ledgerflow.scheduler.client import Client
from ledgerflow.scheduler.embedded import embedded

from ledgerflow.ops.logs import configure_logging
from ledgerflow.ops.timeline import render, timeline

from .orders import process_order

ITEMS = ["apple", "pear", "fig"]


def show(run_id: str, events: list[object], result: object) -> None:
    state = fold(run_id, events)  # type: ignore[arg-type]
    print(f"\nrun {run_id}: {state.workflow} {state.status}")
    print(render(timeline(events)))  # type: ignore[arg-type]
    print(f"\nresult: {result!r}")


async def run_embedded() -> None:
    async with embedded("demo") as client:
        run = await client.start(process_order, "order-42", ITEMS)
        result = await run.result(timeout=30)
        show(run.run_id, await client.events(run.run_id), result)


async def run_real(settings: Settings) -> None:
    # Connect first: without servers, say so before starting any process.
    async with Client.connect(
        settings.amqp_url, settings.redis_url, namespace=settings.namespace
    ) as client:
        env = {
            **os.environ,
            "LEDGERFLOW_NAMESPACE": settings.namespace,
            "LEDGERFLOW_LOG_LEVEL": "warning",
        }
        cli = [sys.executable, "-m", "ledgerflow"]
        worker = [*cli, "worker", "examples.orders", "--concurrency", "8"]
        procs = [
            subprocess.Popen(worker, env=env),  # noqa: ASYNC220 - started before any awaiting
            subprocess.Popen([*cli, "scheduler", "examples.orders"], env=env),  # noqa: ASYNC220
        ]
        print(f"started worker (pid {procs[0].pid}) and scheduler (pid {procs[1].pid})")
        try:
            run = await client.start(process_order, f"order-{uuid.uuid4().hex[:6]}", ITEMS)
            print(f"started run {run.run_id}; waiting for it")
            result = await run.result(timeout=60)
            show(run.run_id, await client.events(run.run_id), result)
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.wait(timeout=30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--embedded", action="store_true", help="in-memory, no servers needed")
    args = parser.parse_args()
    configure_logging("warning")
    if args.embedded:
        asyncio.run(run_embedded())
        return 0
    settings = Settings.from_env(namespace=os.environ.get("LEDGERFLOW_NAMESPACE", "demo"))
    try:
        asyncio.run(run_real(settings))
    except ServiceUnavailableError as exc:
        print(
            f"\n{exc}\nRabbitMQ and Redis are needed for the real demo "
            "(`make services` starts local ones, or see README).\n"
            "Running the same workflow in embedded in-memory mode instead (--embedded):\n"
        )
        asyncio.run(run_embedded())
    return 0


if __name__ == "__main__":
    sys.exit(main())
