"""What each scenario measured, as typed records; ``to_json`` is results.json's shape.

Field names and order are the keys of results.json (readers compare runs across
commits), so a field is added at the end of its record, never renamed.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Integrity:
    """Counts that must be boring: every step created and completed once, nothing retried."""

    steps_created: int
    steps_completed: int
    expected_steps: int
    extra_step_starts: int
    step_retries: int
    step_failures: int

    def suspicious(self) -> bool:
        return bool(
            self.extra_step_starts
            or self.step_retries
            or self.step_failures
            or self.steps_created != self.expected_steps
            or self.steps_completed != self.expected_steps
        )


@dataclass(frozen=True)
class FanoutResult:
    steps: int
    wall_s: float
    steps_per_s: float
    step_p50_ms: float | None
    step_p99_ms: float | None
    run_span_ms: float | None
    ratio_to_floor: float | None
    ratio_name: str
    correct: bool
    integrity: Integrity


@dataclass(frozen=True)
class ManyResult:
    steps: int
    runs: int
    wall_s: float
    steps_per_s: float
    runs_per_s: float
    step_p50_ms: float | None
    step_p99_ms: float | None
    run_p50_ms: float | None
    run_p99_ms: float | None
    ratio_to_floor: float | None
    ratio_name: str
    correct: bool
    integrity: Integrity


@dataclass(frozen=True)
class ChainResult:
    steps: int
    wall_s: float
    steps_per_s: float
    step_p50_ms: float | None
    step_p99_ms: float | None
    step_to_step_p50_ms: float | None
    step_to_step_p99_ms: float | None
    cycle_p50_ms: float | None
    cycle_mean_ms: float | None
    hop_mean_ms: dict[str, float | None]
    ratio_to_floor: float | None
    ratio_name: str
    step_ratio_to_floor: float | None
    correct: bool
    integrity: Integrity


@dataclass(frozen=True)
class LongResult:
    steps: int
    wall_s: float
    steps_per_s: float
    step_p50_ms: float | None
    step_p99_ms: float | None
    first_step_p50_ms: float | None
    last_step_p50_ms: float | None
    first_gap_p50_ms: float | None
    last_gap_p50_ms: float | None
    first_cycle_mean_ms: float | None
    last_cycle_mean_ms: float | None
    scheduler_cpu_ms_per_step_first_fifth: float | None
    scheduler_cpu_ms_per_step_last_fifth: float | None
    scheduler_cpu_ratio: float | None
    ratio_to_floor: float | None
    ratio_name: str
    gap_ratio: float | None
    cycle_mean_ratio: float | None
    summary_extra: str
    correct: bool
    integrity: Integrity


@dataclass(frozen=True)
class SoakResult:
    steps: int
    waves: int
    width: int
    wall_s: float
    steps_per_s: float
    step_p50_ms: None
    step_p99_ms: None
    rss_kib_at_tenth: dict[str, int | None] | None
    rss_kib_at_end: dict[str, int | None] | None
    rss_growth_percent: dict[str, float | None]
    rss_worst_growth_percent: float | None
    rss_mib_by_tenth: list[float | None]
    passed: bool
    events: int
    ratio_to_floor: float | None
    ratio_name: str
    correct: bool
    integrity: dict[str, int] = field(default_factory=dict)
    """Empty: a 200,000-step log is not read back; ``events`` counts it instead."""


@dataclass(frozen=True)
class SleepResult:
    steps: int
    runs: int
    sleep_s: float
    wall_s: float
    steps_per_s: None
    late_p50_ms: float | None
    late_p99_ms: float | None
    late_max_ms: float | None
    late_min_ms: float | None
    wake_to_run_completed_p50_ms: float | None
    # due = the last event's ts + the delay (replay-safe lf.now()), so this can be
    # a little under the requested sleep: the workflow's clock lags wait_created.
    slept_p50_ms: float | None
    slept_min_ms: float | None
    slept_max_ms: float | None
    target_ms: float
    passed: bool
    ratio_to_floor: None
    ratio_name: str
    correct: bool


@dataclass(frozen=True)
class StorageResult:
    """Redis bytes (MEMORY USAGE of a run's own keys) per event and per finished run.

    ``small_*``: runs of ten steps with tiny results (everything inline). ``large_*``:
    the same shape with ``large_payload_bytes`` results, stored out of line
    (``offloaded``: stream, status hash, blob set and blobs) and, for comparison,
    the same log written inline into a scratch stream (``inline``).
    """

    runs: int
    steps_per_run: int
    wall_s: float
    steps_per_s: None
    small_events_per_run: float
    small_bytes_per_event: float
    small_bytes_per_run: float
    large_payload_bytes: int
    large_offloaded_log_bytes_per_run: float
    large_offloaded_blob_bytes_per_run: float
    large_offloaded_bytes_per_run: float
    large_inline_bytes_per_run: float
    ratio_to_floor: None
    ratio_name: str
    correct: bool


@dataclass(frozen=True)
class RetentionResult:
    """A paced stream of short runs under retention, on a Redis of its own (bench.retention).

    ``medians``: per metric, the median of each window of the steady part (from
    ``warmup_s`` after the first paced start to the last start); ``spread`` is
    (max - min) / min of those medians and ``growth`` (last - first) / first.
    Metrics: ``used_memory``, ``dataset`` (used_memory_dataset), ``net``
    (used_memory less ``baseline_used_memory``, the server with the namespace
    empty after the capacity phase), ``bytes_per_run`` (``net`` per run held),
    ``keys`` (DBSIZE; own server only),
    ``runs`` (runs held), ``active`` (unfinished), ``kept`` (finished, awaiting
    removal), ``due`` (past their retention, not removed yet).
    """

    runs: int
    retention_s: float
    janitor_interval_s: float
    redis: str
    capacity_runs: int
    capacity_runs_per_s: float
    rate_fraction: float
    target_runs_per_s: float
    runs_per_s: float  # achieved by the paced producer
    wall_s: float  # first paced start to the last run finished
    steps_per_s: None
    producer_max_lag_s: float
    warmup_s: float
    window_s: float
    windows: int
    samples: int
    baseline_used_memory: int
    baseline_keys: int | None
    medians: dict[str, list[float]]
    spread: dict[str, float | None]
    growth: dict[str, float | None]
    raw_used_memory_min: int
    raw_used_memory_max: int
    max_active: int
    max_due: int
    used_memory_end: int
    keys_end: int | None
    started: int  # every run of the scenario, the capacity phase's included
    left_runs: int
    flat: bool
    cpu_percent_of_one_core: dict[str, float]  # its own processes, over the paced phase
    process_warnings: list[str]
    ratio_to_floor: None
    ratio_name: str
    correct: bool


@dataclass(frozen=True)
class JanitorResult:
    """One sweep of the reconciler's janitor over ``runs`` due runs, one run at a time and,
    over as many fresh runs, a page at once (bench.janitor); CPU is the benchmark
    process's, which runs the janitor here."""

    runs: int
    events_per_run: int
    redis: str
    wall_s: float
    steps_per_s: None
    one_at_a_time_runs_per_s: float
    one_at_a_time_cpu_ms_per_run: float
    paged_runs_per_s: float
    paged_cpu_ms_per_run: float
    speedup: float
    ratio_to_floor: None
    ratio_name: str
    correct: bool


@dataclass(frozen=True)
class LossRound:
    """One round of appends to the runs of one master, which is then killed (bench.failover).

    Counts are of events (a run's first append carries two). ``lost``: acknowledged
    (the append returned) and missing from the run's log once the cluster is whole
    again. ``refused``: appends the store refused because an acknowledged event they
    follow was lost (a step started whose step_created is gone); the appender then
    moves on to a new run. ``failed``: appends that still failed after the store's own
    retries (60 s).
    """

    durability: str
    fault: str  # "plain kill", or how long / how far the replica was stalled before it
    stall_s: float  # DEBUG SLEEP on the replica; 0: a plain kill
    lead_s: float  # from the stall to the kill
    lag_at_kill_bytes: int  # the master's replication offset ahead of its replica's ack
    missing_on_promoted_bytes: int | None  # of the master's stream, what the promoted lacked
    victim: int  # the killed master's port
    appenders: int
    runs: int
    appended: int  # append calls made
    acknowledged: int
    lost: int
    lost_examples: list[str]
    refused: int
    failed: int
    failed_examples: list[str]
    acks_per_s_before: float  # over the warm-up, before any fault
    acked_in_stall: int  # events acknowledged between the stall and the kill
    longest_append_s: float  # one append call, retries included, however it ended
    longest_gap_s: float  # the longest time no append to that master was acknowledged
    resumed_after_kill_s: float | None  # kill -> the first append acknowledged after it
    failover_s: float  # kill -> the replica serves the slots, every node says ok
    rejoin_s: float  # restart of the killed node -> the cluster whole again
    retry_warnings: int  # the store's "retrying" warnings in this process
    not_replicated_warnings: int  # appends on the master whose copies did not confirm


@dataclass(frozen=True)
class StuckRun:
    """A run of the fleet that did not finish: where its log stops, what its steps are doing."""

    run_id: str
    workflow: str
    status: str
    on_victim: bool  # its keys were on the killed master
    lost_tail: bool  # entries its log held just before the kill are gone after it
    events: int
    last_events: list[str]
    open_steps: list[str]  # every step not completed, with its worker and limit


@dataclass(frozen=True)
class FleetRecovery:
    """Workers and a reconciler through a lossy failover (durability none, replica stalled)."""

    runs: int
    shapes: dict[str, int]
    fault: str
    victim: int
    runs_on_victim: int
    runs_lost_tail: int  # of those, runs that lost entries they held just before the kill
    events_lost: int  # the entries they lost
    kill_after_s: float  # from the first start to the kill
    lag_at_kill_bytes: int
    missing_on_promoted_bytes: int | None
    load_acknowledged: int  # events of the load appended meanwhile to the same master
    load_lost: int
    failover_s: float
    completed: int
    finished_otherwise: list[str]  # failed or cancelled runs
    wrong_results: list[str]
    finished_after_kill_s: float | None  # kill -> the last run finished; None: not all did
    recoveries: dict[str, int]  # the reconciler's, by reason (from its log)
    recovered_runs: int
    recovery_lines: list[str]
    log_problems: list[str]  # ops.checker.check_log, and terminals recorded twice
    stuck: list[StuckRun]
    gap_observed: bool  # a stuck run's step started on a live worker, no time limit
    process_warnings: int
    first_warnings: list[str]
    last_finish_after_kill_s: float | None  # kill -> the last run that did finish


@dataclass(frozen=True)
class FailoverResult:
    """Acknowledged appends lost when a master dies, by durability mode, and what a fleet
    with a reconciler recovers from such a loss (bench.failover)."""

    redis: str
    skipped: str | None  # why it did not run (no redis-server, ports taken)
    wall_s: float
    steps_per_s: None
    rounds: list[LossRound]
    fleet: FleetRecovery | None
    replica_rate_ratio: float | None  # acks/s before the kill, replica / none
    ratio_to_floor: None
    ratio_name: str
    correct: bool


ScenarioResult = (
    FanoutResult
    | ManyResult
    | ChainResult
    | LongResult
    | SoakResult
    | SleepResult
    | StorageResult
    | RetentionResult
    | JanitorResult
    | FailoverResult
)


def result_json(result: ScenarioResult) -> dict[str, Any]:
    """``dataclasses.asdict`` of the record: the scenario's entry in results.json."""
    return dataclasses.asdict(result)


@dataclass(frozen=True)
class Outcome:
    """One scenario as run: its result or its error, what it cost, what was logged meanwhile."""

    result: ScenarioResult | None
    error: str | None = None
    cpu_percent_of_one_core: dict[str, float] = field(default_factory=dict)
    disturbed: list[str] = field(default_factory=list)

    @property
    def correct(self) -> bool:
        return self.result is not None and self.result.correct

    def to_json(self) -> dict[str, Any]:
        if self.result is None:
            return {"error": self.error, "disturbed": self.disturbed}
        return {
            **result_json(self.result),
            "cpu_percent_of_one_core": self.cpu_percent_of_one_core,
            "disturbed": self.disturbed,
        }
