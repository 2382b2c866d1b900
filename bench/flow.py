"""Output streams and flow control, measured against their absence in the same run.

``python -m bench.flow [--rounds N]`` (``make bench-flow``), on the real servers of
``LEDGERFLOW_AMQP_URL`` / ``LEDGERFLOW_REDIS_URL``, with a worker and a scheduler in
this process (the embedded layout: what is measured is ledgerflow's own cost, not a
fleet's). Prints, for each pair, both figures and their ratio:

- a step writing 2,000 chunks with ``lf.stream`` against the same loop not writing:
  chunks a second, and how long after being written a second client read each chunk;
- a fan-out of 500 steps under a ``lf.Concurrency`` and a ``lf.RateLimit`` that never
  bind, against the same steps without them: the cost of a declared, idle limit.

Rounds alternate the two sides of each pair, since this machine is shared and noisy.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid
from collections.abc import Sequence
from typing import Any

from ledgerflow.eventlog.settings import Settings
from ledgerflow.scheduler.embedded import serving
from ledgerflow.scheduler.registry import WorkflowFunction
from ledgerflow.worker.backend import connect

import ledgerflow as lf
from ledgerflow.testing.namespace import delete_namespace

CHUNKS = 2_000
WIDTH = 500


@lf.step(name="bench_flow_write")
async def write_chunks(n: int, stream: bool) -> int:
    if not stream:
        for i in range(n):
            await asyncio.sleep(0)
            _ = (i, time.time())
        return n
    async with lf.stream("bench") as out:
        for i in range(n):
            await out.write((i, time.time()))
    return n


@lf.workflow(name="bench_flow_streaming")
async def streaming(n: int, stream: bool) -> int:
    written: int = await write_chunks(n, stream)
    return written


@lf.step(name="bench_flow_plain")
async def plain(i: int) -> int:
    return i


@lf.step(
    name="bench_flow_limited",
    concurrency=lf.Concurrency(100_000),
    rate_limit=lf.RateLimit(1_000_000, per=1.0, burst=100_000),
)
async def limited(i: int) -> int:
    return i


@lf.workflow(name="bench_flow_fanout")
async def fanout(width: int, with_limits: bool) -> int:
    step = limited if with_limits else plain
    return sum(await asyncio.gather(*(step(i) for i in range(width))))


async def timed_run(
    client: lf.Client, workflow: WorkflowFunction[Any, Any], *args: object
) -> float:
    began = time.perf_counter()
    run = await client.start(workflow, *args)
    await run.result(timeout=300)
    return time.perf_counter() - began


async def streamed_with_reader(client: lf.Client, reader: lf.Client) -> tuple[float, list[float]]:
    """Seconds for the run, and each chunk's delay from its write to a second client's read."""
    run = await client.start(streaming, CHUNKS, True)
    began = time.perf_counter()
    lags = [time.time() - chunk.value[1] async for chunk in reader.stream(run.run_id, "bench")]
    await run.result(timeout=300)
    if len(lags) != CHUNKS:
        raise RuntimeError(f"the reader got {len(lags)} chunks of {CHUNKS}")
    return time.perf_counter() - began, lags


def pct(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def measure(rounds: int) -> None:
    settings = Settings.from_env(namespace=f"bench-flow-{uuid.uuid4().hex[:8]}")
    try:
        async with connect(settings) as backends, connect(settings) as other:
            reader = lf.Client(other.store, other.broker)
            async with serving(backends.store, backends.broker) as client:
                plain_s, stream_s, lags = [], [], []
                idle_s, limited_s = [], []
                for _ in range(rounds):
                    plain_s.append(await timed_run(client, streaming, CHUNKS, False))
                    took, lag = await streamed_with_reader(client, reader)
                    stream_s.append(took)
                    lags += lag
                    idle_s.append(await timed_run(client, fanout, WIDTH, False))
                    limited_s.append(await timed_run(client, fanout, WIDTH, True))
    finally:
        await delete_namespace(
            settings.amqp_url, settings.redis_url, settings.namespace, best_effort=True
        )
    base, streamed = statistics.median(plain_s), statistics.median(stream_s)
    print(f"streams: {CHUNKS} chunks from one step, median of {rounds} rounds")
    print(f"  run without writing   {base * 1000:8.1f} ms")
    print(
        f"  run writing a stream  {streamed * 1000:8.1f} ms  ({CHUNKS / streamed:,.0f} chunks/s, "
        f"{(streamed - base) / CHUNKS * 1e6:.0f} µs a chunk; ratio {streamed / base:.2f}x)"
    )
    print(
        f"  read by a second client after p50 {pct(lags, 0.5) * 1000:.2f} ms, "
        f"p99 {pct(lags, 0.99) * 1000:.2f} ms"
    )
    idle, limited_med = statistics.median(idle_s), statistics.median(limited_s)
    print(f"limits declared but not binding: fan-out of {WIDTH}, median of {rounds} rounds")
    print(f"  without limits        {idle * 1000:8.1f} ms  ({WIDTH / idle:,.0f} steps/s)")
    print(
        f"  concurrency + rate    {limited_med * 1000:8.1f} ms  ({WIDTH / limited_med:,.0f} "
        f"steps/s; ratio {limited_med / idle:.2f}x)"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.flow", description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    asyncio.run(measure(max(1, args.rounds)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
