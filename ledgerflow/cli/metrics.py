"""``--metrics-port``: serve /metrics for a worker, scheduler or reconciler process.

Wiring only: the metrics are defined in ledgerflow/ops/metrics.py and recorded by the
layers; this starts prometheus_client's HTTP server (a daemon thread, so a scrape
never runs on the event loop) and the sampler that refreshes the gauges needing
I/O, and stops both when the process stops.
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import AsyncIterator, Sequence

import structlog
from prometheus_client import start_http_server

from ledgerflow.eventlog.errors import ConfigurationError
from ledgerflow.ops.metrics import DEFAULT_SAMPLE_INTERVAL, REGISTRY, GaugeSampler
from ledgerflow.worker.backend import Backends
from ledgerflow.worker.registry import steps

from .args import port_number, positive_float
from .common import retention_of

log = structlog.get_logger("ledgerflow.metrics")

DEFAULT_ADDR = "127.0.0.1"
"""Loopback unless asked: step and queue names are nobody else's business."""


def add_options(parser: argparse.ArgumentParser) -> None:
    """The metrics options every long-running command takes."""
    parser.add_argument(
        "--metrics-port",
        type=port_number,
        default=0,
        help="serve Prometheus metrics on this port at /metrics (0: off)",
    )
    parser.add_argument(
        "--metrics-addr",
        default=DEFAULT_ADDR,
        help="address to serve metrics on (default %(default)s: this host only; "
        "0.0.0.0 for a Prometheus on another host)",
    )
    parser.add_argument(
        "--metrics-interval",
        type=positive_float,
        default=DEFAULT_SAMPLE_INTERVAL,
        help="seconds between reads of queue depths, active runs and pending timers",
    )


def step_queues(args: argparse.Namespace) -> list[str]:
    """The step queues a ``worker`` command consumes (as Worker picks them by default)."""
    return args.queues.split(",") if args.queues else (steps.queues() or ["default"])


@contextlib.asynccontextmanager
async def exported(
    args: argparse.Namespace, backends: Backends, step_queues: Sequence[str] = ()
) -> AsyncIterator[None]:
    """Serve /metrics on ``args.metrics_port`` (if set) for the duration of the block.

    Gauges cover the runs queue, the dead-letter queue and ``step_queues``.
    """
    port: int = args.metrics_port
    if not port:
        yield
        return
    try:
        server, thread = start_http_server(port, addr=args.metrics_addr, registry=REGISTRY)
    except OSError as exc:
        raise ConfigurationError(
            f"cannot serve metrics on {args.metrics_addr}:{port}: {exc}"
        ) from exc
    names = backends.names
    sampler = GaugeSampler(
        backends.store,
        depth=lambda queue: _depth(backends, queue),
        queues=[names.runs_queue, names.dead_queue, *(names.step_queue(q) for q in step_queues)],
        interval=args.metrics_interval,
        retention_ms=retention_of(args),
    )
    sampler.start()
    log.info("metrics served", addr=args.metrics_addr, port=server.server_port)
    try:
        yield
    finally:
        await sampler.stop()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


async def _depth(backends: Backends, queue: str) -> int:
    return (await backends.broker.queue_info(queue)).depth
