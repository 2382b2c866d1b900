"""How evenly a Redis Cluster holds a namespace's runs: N runs written, then counted per master.

The key layout (``eventlog/names.py``) claims that a namespace's runs spread evenly
over the masters: a run's shard is ``crc32(run_id) % shards``, shard i's hash tag
hashes into the i-th equal range of slots, and with 16 shards per master each
master serves the same number of shards. This checks the claim end to end:

* The runs are made as a producer makes them: ids from ``uuid4().hex`` (what
  ``lf.Client.start`` generates), and each run's ``run_created`` (the same
  ``run_created`` record ``Client.start`` builds) and ``run_started`` appended by
  ``RedisEventStore.append`` on the ``redis+cluster://`` URL, in a namespace that
  adopted its layout as every process does. So the keys land where the product
  puts them, not where a model of it would. No RabbitMQ is involved: placement
  is the store's alone. ``WRITERS`` appends are in flight at once.
* Each master is then asked directly: its keys of the namespace (SCAN), its
  ``DBSIZE`` and its ``used_memory`` growth (INFO memory, against a reading taken
  before the writes). A run is counted on the master holding its status hash;
  the same count is predicted from the run ids (shard, its tag's slot, the master
  serving that slot) and the two must agree, so a layout bug cannot hide behind
  an even-looking total.
* The cluster is the benchmark's own: it is flushed afterwards (every master's
  FLUSHALL, on its own ports only), and the caller stops it.
"""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from ledgerflow.eventlog.events import EventType, NewEvent, run_created
from ledgerflow.eventlog.names import Names, shard_of
from ledgerflow.eventlog.records import RunCreated
from ledgerflow.eventlog.redis_client import redis_client
from ledgerflow.eventlog.redis_store import RedisEventStore
from redis.crc import key_slot

from bench import apps
from bench.stats import fmt
from tests.cluster.redis_cluster import NodeInfo, RedisClusterNodes

WRITERS = 64
"""Appends in flight: the cluster client's gate (``MAX_CONNECTIONS``) admits as many."""


@dataclass(frozen=True)
class MasterShare:
    """One master's part of the namespace: what it serves and what it holds."""

    port: int
    slots: str  # its slot ranges, "0-5460"
    shards: int  # the namespace's shards whose hash tag it serves
    runs_predicted: int  # runs whose shard it serves, from the run ids
    runs: int  # runs whose status hash it holds
    streams: int  # runs whose log stream it holds
    keys: int  # every key of the namespace it holds (runs' and shards' index keys)
    dbsize: int
    bytes: int  # used_memory growth over the writes


@dataclass(frozen=True)
class DistributionResult:
    """``runs`` runs over the masters; deviations are (value - mean) / mean, in %."""

    runs: int
    shards: int
    writers: int
    write_s: float
    runs_per_s: float
    masters: list[MasterShare]
    shards_deviation_pct: list[float]
    runs_deviation_pct: list[float]
    keys_deviation_pct: list[float]
    bytes_deviation_pct: list[float]
    max_shards_deviation_pct: float
    max_runs_deviation_pct: float
    max_keys_deviation_pct: float
    max_bytes_deviation_pct: float
    binomial_sd_pct: float  # one standard deviation of a master's run count, by chance alone
    placement_as_predicted: bool
    keys_left: int  # on the masters after the flush
    correct: bool


def deviations(values: Sequence[float]) -> list[float]:
    """Each value's distance from the mean, in % of the mean."""
    mean = sum(values) / len(values) if values else 0.0
    return [0.0 if mean == 0 else (v - mean) * 100.0 / mean for v in values]


def master_of(masters: Sequence[NodeInfo], slot: int) -> int:
    """The port of the master serving ``slot``."""
    for node in masters:
        if any(low <= slot <= high for low, high in node.slots):
            return node.port
    raise LookupError(f"no master serves slot {slot}")


def run_ids(count: int) -> list[str]:
    """Run ids as ``lf.Client.start`` makes them when the producer gives none."""
    return [uuid.uuid4().hex for _ in range(count)]


async def write_runs(store: RedisEventStore, ids: Sequence[str]) -> float:
    """run_created + run_started of every run, ``WRITERS`` appends in flight; seconds taken."""
    workflow = apps.many.definition
    record = RunCreated(
        workflow=workflow.name,
        args=[apps.MANY_WIDTH],
        kwargs={},
        retention_ms=workflow.retention_ms,
    )
    created = run_created(
        record, what=f"arguments of workflow {workflow.name!r}", offload_args=True
    )
    started = NewEvent.of(EventType.RUN_STARTED)
    pending: Iterator[str] = iter(ids)

    async def writer() -> None:
        for run_id in pending:  # shared: each writer takes the next id
            await store.append(run_id, [created, started])

    began = time.perf_counter()
    await asyncio.gather(*(writer() for _ in range(WRITERS)))
    return time.perf_counter() - began


async def used_memory(port: int) -> int:
    client = redis_client(f"redis://127.0.0.1:{port}/0", max_connections=2)
    try:
        info: dict[str, Any] = await client.info("memory")
        return int(info["used_memory"])
    finally:
        await client.aclose()


async def count_master(
    port: int, names: Names, status_keys: set[str], stream_keys: set[str]
) -> tuple[int, int, int, int]:
    """(keys of the namespace, status hashes of the runs, their streams, DBSIZE) on one master."""
    client = redis_client(f"redis://127.0.0.1:{port}/0", max_connections=2)
    keys = runs = streams = 0
    try:
        async for raw in client.scan_iter(match=names.key_pattern(), count=1000):
            key = raw.decode() if isinstance(raw, bytes) else str(raw)
            keys += 1
            runs += key in status_keys
            streams += key in stream_keys
        return keys, runs, streams, int(await client.dbsize())
    finally:
        await client.aclose()


async def flush_masters(cluster: RedisClusterNodes, ports: Sequence[int]) -> int:
    """FLUSHALL on the benchmark's own masters (never any other port); keys left on them."""
    left = 0
    for port in ports:
        if port not in cluster.ports:
            raise RuntimeError(f"refusing to flush :{port}, not a node of the benchmark's cluster")
        client = redis_client(f"redis://127.0.0.1:{port}/0", max_connections=2)
        try:
            await client.flushall()
            left += int(await client.dbsize())
        finally:
            await client.aclose()
    return left


async def key_distribution(
    cluster: RedisClusterNodes, runs: int, namespace: str
) -> DistributionResult:
    """Write ``runs`` runs on the cluster through the store, count them per master, flush."""
    nodes = await asyncio.to_thread(cluster.nodes)
    masters = sorted(
        (n for n in nodes if n.master and not n.failed and n.slots), key=lambda n: n.port
    )
    ports = [m.port for m in masters]
    try:
        before = [await used_memory(port) for port in ports]
        store = RedisEventStore.from_url(cluster.url(), Names(namespace))
        try:
            await store.ping()
            names = await store.adopt_layout()  # 16 shards per master, as every process adopts
            shard_master = [
                master_of(masters, key_slot(names.shard_tag(i).encode()))
                for i in range(names.shards)
            ]
            ids = run_ids(runs)
            write_s = await write_runs(store, ids)
        finally:
            await store.close()
        predicted = {port: 0 for port in ports}
        for run_id in ids:
            predicted[shard_master[shard_of(run_id, names.shards)]] += 1
        status_keys = {names.status(r) for r in ids}
        stream_keys = {names.stream(r) for r in ids}
        shares = []
        for node, used in zip(masters, before, strict=True):
            keys, held, streams, dbsize = await count_master(
                node.port, names, status_keys, stream_keys
            )
            shares.append(
                MasterShare(
                    port=node.port,
                    slots=",".join(f"{lo}-{hi}" for lo, hi in node.slots),
                    shards=shard_master.count(node.port),
                    runs_predicted=predicted[node.port],
                    runs=held,
                    streams=streams,
                    keys=keys,
                    dbsize=dbsize,
                    bytes=await used_memory(node.port) - used,
                )
            )
    finally:
        keys_left = await flush_masters(cluster, ports)
    as_predicted = all(s.runs == s.runs_predicted == s.streams for s in shares)
    as_predicted = as_predicted and sum(s.runs for s in shares) == runs
    by: dict[str, list[float]] = {
        "shards": deviations([s.shards for s in shares]),
        "runs": deviations([s.runs for s in shares]),
        "keys": deviations([s.keys for s in shares]),
        "bytes": deviations([s.bytes for s in shares]),
    }
    share = 1.0 / len(shares)
    return DistributionResult(
        runs=runs,
        shards=names.shards,
        writers=WRITERS,
        write_s=write_s,
        runs_per_s=runs / write_s,
        masters=shares,
        shards_deviation_pct=by["shards"],
        runs_deviation_pct=by["runs"],
        keys_deviation_pct=by["keys"],
        bytes_deviation_pct=by["bytes"],
        max_shards_deviation_pct=max(abs(d) for d in by["shards"]),
        max_runs_deviation_pct=max(abs(d) for d in by["runs"]),
        max_keys_deviation_pct=max(abs(d) for d in by["keys"]),
        max_bytes_deviation_pct=max(abs(d) for d in by["bytes"]),
        binomial_sd_pct=100.0 * math.sqrt((1.0 - share) / (runs * share)),
        placement_as_predicted=as_predicted,
        keys_left=keys_left,
        correct=as_predicted and keys_left == 0,
    )


def describe_distribution(d: DistributionResult) -> str:
    """The per-master table and the maximum deviations, as printed."""
    mib = 2**20
    lines = [
        f"  {d.runs:,} runs (run_created + run_started each, RedisEventStore.append, "
        f"{d.writers} in flight) over {len(d.masters)} masters, {d.shards} shards: written in "
        f"{d.write_s:.1f} s ({fmt(d.runs_per_s, 0)} runs/s)",
        f"  {'master':<7} {'slots':<12} {'shards':>6} {'runs':>8} {'share':>7} {'dev':>7} "
        f"{'keys':>8} {'dev':>7} {'MiB':>7} {'dev':>7}",
    ]
    for s, run_dev, key_dev, byte_dev in zip(
        d.masters, d.runs_deviation_pct, d.keys_deviation_pct, d.bytes_deviation_pct, strict=True
    ):
        lines.append(
            f"  :{s.port:<6} {s.slots:<12} {s.shards:>6} {s.runs:>8,} "
            f"{100.0 * s.runs / max(d.runs, 1):>6.2f}% {run_dev:>+6.2f}% {s.keys:>8,} "
            f"{key_dev:>+6.2f}% {s.bytes / mib:>7.1f} {byte_dev:>+6.2f}%"
        )
    lines.append(
        f"  max deviation from an even share: runs {d.max_runs_deviation_pct:.2f} %, keys "
        f"{d.max_keys_deviation_pct:.2f} %, bytes (used_memory growth) "
        f"{d.max_bytes_deviation_pct:.2f} %; shards per master "
        f"{d.max_shards_deviation_pct:.2f} % (chance alone: a master's run count has a "
        f"standard deviation of {d.binomial_sd_pct:.2f} % at this size)"
    )
    lines.append(
        f"  runs counted per master = predicted from the ids (crc32 -> shard -> tag slot -> "
        f"master): {'yes' if d.placement_as_predicted else 'NO'}; after the flush "
        f"{d.keys_left} keys left on the masters"
    )
    return "\n".join(lines)
