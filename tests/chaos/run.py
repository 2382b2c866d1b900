"""The full chaos run: ``python -m tests.chaos.run [--runs N] [--duration S] [--seed K]``.

``make chaos`` runs it with the defaults (200 runs over two minutes of faults, two
RabbitMQ restarts). It prints the report and exits 0 only if no run was lost,
wrong or duplicated and no process died on its own: 1 otherwise, 3 when the
servers are not reachable.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import random
import signal
import sys
from collections.abc import Sequence
from typing import Any

from ledgerflow.ops.logs import configure_logging
from tests.chaos.driver import ChaosReport, default_namespace, run_chaos
from tests.servers import HOW_TO_START, configured, reachable


async def _until_signalled(*args: Any, **kwargs: Any) -> ChaosReport:
    """run_chaos, cancelled (so every ``finally`` runs) on SIGTERM as on Ctrl-C.

    SIGTERM (a CI timeout, ``timeout``) would otherwise end the process at once
    and could leave RabbitMQ's app stopped in the middle of a restart.
    """
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    return await run_chaos(*args, **kwargs)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.chaos.run", description=__doc__)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--duration", type=float, default=150.0, help="seconds of load and faults")
    parser.add_argument("--seed", type=int, default=None, help="default: random, printed")
    parser.add_argument("--rabbit-restarts", type=int, default=2)
    parser.add_argument("--fault-every", type=float, default=3.0, help="mean seconds")
    parser.add_argument("--result-timeout", type=float, default=180.0)
    parser.add_argument("--namespace", default=None)
    parser.add_argument("--verbose", action="store_true", help="print the fault timeline")
    parser.add_argument(
        "--log-level", default="warning", help="of the worker and scheduler processes"
    )
    args = parser.parse_args(argv)
    servers = configured()
    if not (reachable(servers.amqp_url, 5672) and reachable(servers.redis_url, 6379)):
        print(HOW_TO_START, file=sys.stderr)
        return 3
    # The driver's own retries log through structlog; keep them to real problems.
    configure_logging(os.environ.get("LEDGERFLOW_LOG_LEVEL", "error"))
    # aio-pika narrates the driver's own connection through every broker restart.
    for noisy in ("aio_pika", "aiormq"):
        logging.getLogger(noisy).setLevel(logging.CRITICAL)
    seed = args.seed if args.seed is not None else random.randrange(10**6)
    namespace = args.namespace or default_namespace()
    print(f"chaos: {args.runs} runs, {args.duration:.0f} s of faults, seed {seed}", flush=True)
    try:
        report = asyncio.run(
            _until_signalled(
                servers,
                namespace,
                runs=args.runs,
                duration=args.duration,
                seed=seed,
                fault_every=args.fault_every,
                rabbit_restarts=args.rabbit_restarts,
                result_timeout=args.result_timeout,
                log_level=args.log_level,
            )
        )
    except (KeyboardInterrupt, asyncio.CancelledError):
        # run_chaos has started RabbitMQ's app again, stopped its processes and
        # deleted its namespace on the way out.
        print("chaos: interrupted; processes stopped, namespace deleted", file=sys.stderr)
        return 130
    print(report.render(verbose=args.verbose))
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
