"""What the benchmark runs: its process layout, its sizes and its time limits."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS_JSON = Path(__file__).resolve().parent / "results.json"
RESULTS_CLUSTER_JSON = Path(__file__).resolve().parent / "results-cluster.json"
"""``--redis-cluster`` writes here, so a cluster comparison never replaces the main figures."""
APP = "bench.apps"
WORKERS = 2
WORKER_CONCURRENCY = 64
SCHEDULERS = 0  # 0: every worker runs with --with-scheduler (the layout)


@dataclass(frozen=True)
class Layout:
    """The benchmark's processes: ``--workers`` / ``--schedulers`` change it for a scaling run."""

    workers: int = WORKERS
    schedulers: int = SCHEDULERS  # 0: every worker is its own scheduler (--with-scheduler)
    concurrency: int = WORKER_CONCURRENCY

    @property
    def consumers_of_runs(self) -> int:
        return self.schedulers or self.workers

    def describe(self) -> str:
        who = f"{self.schedulers} scheduler(s)" if self.schedulers else "each its own scheduler"
        return f"{self.workers} workers (--concurrency {self.concurrency}), {who}"


READY_TIMEOUT = 60.0
STOP_TIMEOUT = 20.0
# A healthy run here takes seconds; a stuck one should cost a minute, not the budget.
RUN_TIMEOUT = 60.0
FLOOR_TIMEOUT = 10.0
FLOOR_ATTEMPTS = 3
SLEEP_TARGET_MS = 100.0
IDLE_SECONDS = 3.0
HISTORY_WARN = 1_000_000
HISTORY_LIMIT = 2_000_000
SCENARIOS = (
    "fanout",
    "many",
    "chain",
    "long",
    "soak",
    "sleep",
    "storage",
    "janitor",
    "retention",
    "failover",
)


@dataclass(frozen=True)
class Sizes:
    """How big each scenario is; --quick shrinks the ones whose time grows with size."""

    floor_amqp: int
    floor_redis: int
    fanout: int
    many_runs: int
    chain: int
    long: int
    soak_waves: int = 2000
    soak_width: int = 100
    sleepers: int = 50
    sleep_seconds: float = 1.0
    long_window: int = 100
    storage_runs: int = 20
    storage_payload: int = 256 * 1024
    retention_runs: int = 200_000
    retention_capacity_runs: int = 10_000
    janitor_runs: int = 3000
    distribution_runs: int = 100_000  # --redis-cluster: runs whose keys are counted per master
    failover_runs: int = 60

    @classmethod
    def pick(cls, quick: bool) -> Sizes:
        if quick:
            return cls(
                floor_amqp=500,
                floor_redis=2000,
                fanout=500,
                many_runs=50,
                chain=100,
                long=400,
                soak_waves=200,
                storage_runs=5,
                retention_runs=5_000,
                retention_capacity_runs=1_000,
                janitor_runs=1000,
                distribution_runs=10_000,
                failover_runs=24,
            )
        return cls(
            floor_amqp=2000,
            floor_redis=5000,
            fanout=10_000,
            many_runs=1000,
            chain=2000,
            long=10_000,
        )


# The retention scenario (bench.retention).
RETENTION_RATE_FRACTION = 0.65
"""The paced phase starts runs at this fraction of the capacity measured just before it:
clearly below what the machine can do, so the steady state is defined."""
RETENTION_CAPACITY_LIVE = 300
"""Unfinished runs the capacity phase keeps at most (it starts more as they finish): more
than the two workers run at once (2 x 64), few enough that none waits long in the queue
(a run waiting 30 s gets a second activation from the reconciler)."""
RETENTION_CAPACITY_S = 40.0
"""The capacity phase stops starting runs after this long, however few it started."""
RETENTION_FLAT = 0.10
"""The target: the window medians of used_memory (and of the runs held) within 10 %."""
RETENTION_SAMPLE_S = 1.0
RETENTION_WINDOWS = 10
"""The steady part is cut into at most this many windows, each judged by its median."""
RETENTION_MIN_WINDOWS = 5
"""Fewer windows of steady state than this (a --quick run that a fast machine finishes in
seconds) are reported as not judged rather than as flat or not."""
RETENTION_MAX_BACKLOG_S = 30.0
"""The paced phase gives up once this many seconds of runs are waiting to finish: the
rate is then above what the machine does, and there is no steady state to measure."""


# The failover scenario (bench.failover).
FAILOVER_BASE_PORT = 17200
"""Its Redis Cluster's first port (the cluster tests use 17100, another helper 17300)."""
FAILOVER_APPENDERS = 16
"""Concurrent appenders on the runs of the master that is killed."""
FAILOVER_STEPS_PER_RUN = 10
"""Each appender's run: run_created + run_started, this many step triples, run_completed."""
FAILOVER_WARMUP_S = 2.0
"""Appending before any fault: the rate each durability mode sustains here."""
FAILOVER_SHORT_LEAD_S = 1.0
"""The short stall: appending this long into a stalled replica (``DEBUG SLEEP``), then the
kill. On loopback the kernel's socket buffers (5 MB to tens of MB, as the connection's
window grew) still carry what they took to the replica when it wakes, so a second's
backlog may be lost only in part, or not at all."""
FAILOVER_LAG_MARGIN_BYTES = 8 * 2**20
"""The deep stall: appending into the stalled replica until the master's replication offset
is this much further ahead of what the replica acknowledged than the kernel can buffer on
one connection (``bench.failover.kernel_buffer_bytes``), then the kill: what a replica cut
off by a partition, or a master whose host dies with its buffers, loses."""
FAILOVER_LAG_FALLBACK_BYTES = 48 * 2**20
"""The deep stall's lag where the kernel's buffer limits cannot be read."""
FAILOVER_LAG_CAP_S = 15.0
"""The deep stall kills after this long at most, however small the lag (with ``replica``
durability the lag stays small: the appends wait)."""
FAILOVER_STALL_TAIL_S = 1.0
"""The replica sleeps this much longer than the longest lead, so it is still asleep at the
kill: it is promoted only after it wakes."""
FAILOVER_AFTER_S = 1.0
"""Appending after the promotion, and again after the killed node is back as a replica."""
FAILOVER_RESUME_S = 20.0
"""Once the killed node is back, the appenders get this long to have an append acknowledged
again (the store's backoff between attempts grows to 5 s)."""
FAILOVER_DRAIN_S = 90.0
"""Appends in flight when the appenders stop get this long to finish (the store retries a
failed append for 60 s)."""
FAILOVER_FLEET_LEAD_S = 1.0
"""The fleet's runs are in flight this long before the replica is stalled."""
FAILOVER_FLEET_TIMEOUT_S = 120.0
"""After the kill, every run of the fleet has this long to finish."""
