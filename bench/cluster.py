"""``--redis-cluster``: the same scenarios on one redis-server and on a Redis Cluster, compared.

The question is what the cluster costs against one Redis. On a shared, noisy
2-core machine an absolute figure from another day answers nothing, so both are
measured in the same run with the same fleet layout and sizes, and reported side
by side with the ratio cluster / single. Both fleets are up together (each idle
while the other works), and each scenario runs on one right after the other, the
order alternating from scenario to scenario, so the two figures of a ratio are
seconds apart:

* **single**: a ``redis-server`` of the benchmark's own on a loopback port
  (``bench.retention.own_redis``: the same binary as the cluster's nodes, no
  persistence, default settings), never the shared server, whose load is other
  tenants'.
* **cluster**: the local 3-master + 3-replica cluster of the tests
  (``tests/cluster/redis_cluster.py``) on ports from ``CLUSTER_BASE_PORT``; the
  fleet's processes and the benchmark's client get its ``redis+cluster://`` URL,
  so the namespace adopts 16 shards per master. The replicas are part of what is
  measured: a master feeds its replica every write, as deployed.

Only scenarios that run on the fleet's Redis are offered (the janitor and
retention scenarios start a redis-server of their own). Each fleet has its own
namespace, so the two never share a queue. Then ``bench.distribution`` writes
``distribution_runs`` runs on the cluster and counts them per master.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bench.floors import Floor
from bench.results import (
    ChainResult,
    FanoutResult,
    LongResult,
    ManyResult,
    Outcome,
    ScenarioResult,
    SleepResult,
    SoakResult,
    StorageResult,
)
from bench.stats import fmt, ratio
from tests.cluster.redis_cluster import RedisClusterNodes

CLUSTER_BASE_PORT = 17300
"""The cluster's six ports (and +10000 for its bus): the tests use 17100, bench.failover 17200."""
CLUSTER_SCENARIOS = ("fanout", "many", "chain", "long", "sleep")
"""The default: throughput and latency, a few seconds each (soak and storage on request)."""
OWN_REDIS_SCENARIOS = ("janitor", "retention", "failover")
"""They run on a redis-server of their own whatever the URL: nothing to compare."""

Figure = tuple[str, float | None]


def scenario_figures(result: ScenarioResult) -> list[Figure]:
    """The figures of one scenario that are compared, named as printed."""
    if isinstance(result, FanoutResult):
        return [
            ("steps/s", result.steps_per_s),
            ("step p50 ms", result.step_p50_ms),
            ("step p99 ms", result.step_p99_ms),
        ]
    if isinstance(result, ManyResult):
        return [
            ("steps/s", result.steps_per_s),
            ("step p50 ms", result.step_p50_ms),
            ("step p99 ms", result.step_p99_ms),
            ("run p50 ms", result.run_p50_ms),
            ("run p99 ms", result.run_p99_ms),
        ]
    if isinstance(result, ChainResult):
        # Step-to-step is in whole ms (1 ms here): the mean cycle is the sharper figure.
        return [
            ("steps/s", result.steps_per_s),
            ("step-to-step p50 ms", result.step_to_step_p50_ms),
            ("step-to-step p99 ms", result.step_to_step_p99_ms),
            ("cycle mean ms", result.cycle_mean_ms),
            *((f"{hop} mean ms", value) for hop, value in result.hop_mean_ms.items()),
        ]
    if isinstance(result, LongResult):
        return [
            ("steps/s", result.steps_per_s),
            ("step p50 ms", result.step_p50_ms),
            ("step p99 ms", result.step_p99_ms),
            ("last-100 cycle mean ms", result.last_cycle_mean_ms),
        ]
    if isinstance(result, SleepResult):
        return [
            ("lateness p50 ms", result.late_p50_ms),
            ("lateness p99 ms", result.late_p99_ms),
            ("lateness max ms", result.late_max_ms),
        ]
    if isinstance(result, SoakResult):
        return [
            ("steps/s", result.steps_per_s),
            ("worst RSS growth %", result.rss_worst_growth_percent),
        ]
    if isinstance(result, StorageResult):
        return [
            ("bytes per run", result.small_bytes_per_run),
            ("bytes per event", result.small_bytes_per_event),
        ]
    return []


def cpu_figures(cpu: dict[str, float], rate: float | None) -> list[Figure]:
    """CPU of Redis (a cluster's masters, and its replicas apart), the workers and the client:
    per step where there is a step ``rate`` (a slower pass uses less CPU per second for the
    same work), else in % of one core; and the whole machine's, in % of one core."""
    workers = [v for k, v in cpu.items() if k.startswith(("worker", "scheduler"))]
    # On a cluster "redis" is its masters; "redis replicas" only a cluster has.
    parts: dict[str, float] = {k: cpu[k] for k in ("redis", "redis replicas") if k in cpu}
    if workers:
        parts["workers"] = sum(workers)
    if "bench client" in cpu:
        parts["bench client"] = cpu["bench client"]
    figures: list[Figure]
    if rate:
        # % of one core / steps per second = core-seconds per step, x 10,000 for us.
        figures = [(f"CPU us/step {k}", v * 10_000.0 / rate) for k, v in parts.items()]
    else:
        figures = [(f"CPU % {k}", v) for k, v in parts.items()]
    return [*figures, ("CPU % machine", cpu.get("machine"))]


def floor_figures(floor: Floor) -> list[Figure]:
    """The floor: Redis's own cost per XADD, and RabbitMQ's (no Redis: the machine's drift)."""
    return [
        ("Redis XADD ops/s", floor.redis_xadd_ops_per_s),
        ("Redis XADD p50 ms", floor.redis_xadd_p50_ms),
        ("Redis XADD p99 ms", floor.redis_xadd_p99_ms),
        ("AMQP msgs/s in flight (drift)", floor.amqp_pipelined_msgs_per_s),
        ("AMQP round trip p50 ms (drift)", floor.amqp_rtt_p50_ms),
    ]


@dataclass(frozen=True)
class PassFigures:
    """What one side of the comparison measured: its floor, its idle CPU, its scenarios."""

    floor: Floor | None
    idle_cpu: dict[str, float]
    outcomes: dict[str, Outcome]


def compare(single: PassFigures, cluster: PassFigures) -> list[dict[str, Any]]:
    """One row per figure: single, cluster, cluster / single (None where a pass lacks it)."""
    rows: list[dict[str, Any]] = []

    def add(scenario: str, a: list[Figure], b: list[Figure]) -> None:
        """A row per figure of either pass (a figure of one pass only: no ratio)."""
        mine, theirs = dict(a), dict(b)
        for figure in dict.fromkeys([*theirs, *mine]):  # the cluster has more (its replicas)
            value, other = mine.get(figure), theirs.get(figure)
            rows.append(
                {
                    "scenario": scenario,
                    "figure": figure,
                    "single": value,
                    "cluster": other,
                    "ratio": ratio(other, value),
                }
            )

    if single.floor is not None and cluster.floor is not None:
        add("floor", floor_figures(single.floor), floor_figures(cluster.floor))
    # What each side costs doing nothing (the timer loop polls every shard, a cluster's
    # nodes gossip): background that every per-step CPU figure below includes.
    if single.idle_cpu and cluster.idle_cpu:
        add("idle", cpu_figures(single.idle_cpu, None), cpu_figures(cluster.idle_cpu, None))
    for name, mine in single.outcomes.items():
        theirs = cluster.outcomes.get(name)
        if mine.result is None or theirs is None or theirs.result is None:
            continue
        add(name, scenario_figures(mine.result), scenario_figures(theirs.result))
        add(
            name,
            cpu_figures(mine.cpu_percent_of_one_core, getattr(mine.result, "steps_per_s", None)),
            cpu_figures(
                theirs.cpu_percent_of_one_core, getattr(theirs.result, "steps_per_s", None)
            ),
        )
    return rows


def _digits(figure: str) -> int:
    """Decimals worth printing: whole-ms figures whole, sub-ms ones finer."""
    if "XADD p" in figure:
        return 3
    if figure.endswith("mean ms") or "round trip" in figure:
        return 2
    return 0


def comparison_table(rows: list[dict[str, Any]]) -> str:
    """The rows side by side; a rate's ratio below 1, a time's above 1: the cluster's cost."""
    header = f"{'scenario':<9} {'figure':<31} {'single':>10} {'cluster':>10} {'cluster/single':>15}"
    lines = [header, "-" * len(header)]
    previous = ""
    for row in rows:
        scenario = row["scenario"] if row["scenario"] != previous else ""
        previous = row["scenario"]
        d = _digits(row["figure"])
        lines.append(
            f"{scenario:<9} {row['figure']:<31} {fmt(row['single'], d):>10} "
            f"{fmt(row['cluster'], d):>10} {fmt(row['ratio'], 2):>15}"
        )
    return "\n".join(lines)


def cluster_layout(cluster: RedisClusterNodes) -> dict[str, Any]:
    """Who is master of which slots and who replicates whom, for results.json."""
    nodes = cluster.nodes()
    by_id = {n.node_id: n.port for n in nodes}
    return {
        "url": cluster.url(),
        "masters": {
            str(n.port): ",".join(f"{lo}-{hi}" for lo, hi in n.slots)
            for n in sorted(nodes, key=lambda n: n.port)
            if n.master and n.slots
        },
        "replicas": {
            str(n.port): by_id.get(n.master_id)
            for n in sorted(nodes, key=lambda n: n.port)
            if not n.master
        },
    }
