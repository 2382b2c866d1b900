"""What the benchmark prints and records: the figures, the machine, the code, the servers."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

from ledgerflow.broker.rabbitmq import connect_first
from ledgerflow.eventlog.redis_client import redis_client
from ledgerflow.eventlog.settings import Settings

from bench.config import (
    FAILOVER_APPENDERS,
    FAILOVER_FLEET_TIMEOUT_S,
    RETENTION_FLAT,
    RETENTION_MIN_WINDOWS,
    ROOT,
    SLEEP_TARGET_MS,
)
from bench.floors import Floor
from bench.results import (
    ChainResult,
    FailoverResult,
    Integrity,
    JanitorResult,
    LongResult,
    LossRound,
    ManyResult,
    Outcome,
    RetentionResult,
    SleepResult,
    SoakResult,
    StorageResult,
)
from bench.stats import fmt


def percent(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f} %"


def describe_retention(r: RetentionResult) -> list[str]:
    """The retention scenario's lines: the load, then each metric's window medians."""
    mib = 2**20
    lines = [
        f"  on the {r.redis}; reconciler process, janitor every {r.janitor_interval_s:g} s",
        f"  capacity {fmt(r.capacity_runs_per_s, 0)} runs/s ({r.capacity_runs} runs as fast as "
        f"they finish); paced {r.runs} one-step runs at {fmt(r.target_runs_per_s, 0)} runs/s "
        f"({r.rate_fraction:.0%}), achieved {fmt(r.runs_per_s, 0)} runs/s, producer lag at "
        f"most {r.producer_max_lag_s:.2f} s, {r.wall_s:.1f} s to the last finish",
        f"  retention {r.retention_s:g} s; {r.windows} windows of {r.window_s:.0f} s after a "
        f"{r.warmup_s:g} s warm-up ({r.samples} samples); window medians, first .. last "
        f"(min - max), spread (max - min) / min:",
    ]
    scale = {"used_memory": mib, "dataset": mib, "net": mib}
    for metric, values in r.medians.items():
        unit = " MiB" if metric in scale else " B" if metric == "bytes_per_run" else ""
        div = scale.get(metric, 1)
        digits = 1 if metric in scale else 0
        lines.append(
            f"    {metric:<12} {fmt(values[0] / div, digits)} .. {fmt(values[-1] / div, digits)}"
            f"{unit} ({fmt(min(values) / div, digits)} - {fmt(max(values) / div, digits)}), "
            f"spread {percent(r.spread[metric])}, growth {percent(r.growth[metric])}"
        )
    lines.append(
        f"  raw used_memory after warm-up {r.raw_used_memory_min / mib:.1f} - "
        f"{r.raw_used_memory_max / mib:.1f} MiB (saw-tooth of the janitor's sweeps); "
        f"baseline {r.baseline_used_memory / mib:.1f} MiB, {r.used_memory_end / mib:.1f} MiB "
        f"at the end; most unfinished {r.max_active}, most due but not removed {r.max_due}"
    )
    keys = "" if r.keys_end is None else f", keys {r.keys_end} (baseline {r.baseline_keys})"
    lines.append(f"  {r.started} runs started in all; at the end {r.left_runs} runs held{keys}")
    lines.append(
        f"  flat: used_memory spread {percent(r.spread['used_memory'])}, runs held spread "
        f"{percent(r.spread['runs'])} -> {retention_verdict(r)} "
        f"(target: within {RETENTION_FLAT:.0%})"
    )
    return lines


def round_label(r: LossRound) -> str:
    return f"{r.durability.partition(':')[0]}, {r.fault}"


def mib(value: int | None) -> str:
    return "-" if value is None else f"{value / 2**20:.1f}"


def describe_failover(r: FailoverResult) -> list[str]:
    """The failover scenario's lines: the rounds side by side, then the fleet's recovery."""
    if r.skipped is not None:
        return [f"  skipped: {r.skipped}"]
    lines = [f"  on an {r.redis}"]
    if r.rounds:
        victims = sorted({x.victim for x in r.rounds})
        lines.append(
            f"  acknowledged appends lost: {r.rounds[0].appenders} appenders on the runs of one "
            f"master (:{', :'.join(map(str, victims))}), SIGKILLed; the replica stalled (DEBUG "
            "SLEEP) first, or not; appending through the promotion and the node's return"
        )
        rows: list[tuple[str, list[str]]] = [
            ("replica asleep s", [f"{x.stall_s:g}" for x in r.rounds]),
            ("stall -> kill s", [f"{x.lead_s:.2f}" for x in r.rounds]),
            ("lag at the kill MiB", [mib(x.lag_at_kill_bytes) for x in r.rounds]),
            ("promoted lacked >= MiB", [mib(x.missing_on_promoted_bytes) for x in r.rounds]),
            ("runs", [str(x.runs) for x in r.rounds]),
            ("events appended", [str(x.appended) for x in r.rounds]),
            ("acknowledged", [str(x.acknowledged) for x in r.rounds]),
            ("LOST (acknowledged, gone)", [str(x.lost) for x in r.rounds]),
            ("refused after a loss", [str(x.refused) for x in r.rounds]),
            ("failed after retries", [str(x.failed) for x in r.rounds]),
            ("appends/s before the fault", [fmt(x.acks_per_s_before, 0) for x in r.rounds]),
            ("events acked in the stall", [str(x.acked_in_stall) for x in r.rounds]),
            ("longest append s", [f"{x.longest_append_s:.2f}" for x in r.rounds]),
            ("longest pause, no ack s", [f"{x.longest_gap_s:.2f}" for x in r.rounds]),
            ("first ack after the kill s", [fmt(x.resumed_after_kill_s, 2) for x in r.rounds]),
            ("failover s (kill->promoted)", [f"{x.failover_s:.2f}" for x in r.rounds]),
            ("rejoin s (restart->whole)", [f"{x.rejoin_s:.2f}" for x in r.rounds]),
            ("store retry warnings", [str(x.retry_warnings) for x in r.rounds]),
            ("not-replicated warnings", [str(x.not_replicated_warnings) for x in r.rounds]),
        ]
        width = max(10, *(len(x.fault) + 2 for x in r.rounds))
        lines.append(
            f"    {'durability':<28}"
            + "".join(f"{x.durability.partition(':')[0]:>{width}}" for x in r.rounds)
        )
        lines.append(f"    {'fault':<28}" + "".join(f"{x.fault:>{width}}" for x in r.rounds))
        for name, values in rows:
            lines.append(f"    {name:<28}" + "".join(f"{v:>{width}}" for v in values))
        for x in r.rounds:
            if x.lost_examples:
                lines.append(f"    lost, {round_label(x)}: {'; '.join(x.lost_examples)}")
            if x.failed_examples:
                lines.append(f"    refused/failed, {round_label(x)}: {x.failed_examples[0][:200]}")
        lines.append(
            f"  cost of waiting for a replica: appends/s before any fault, replica / none = "
            f"{fmt(r.replica_rate_ratio, 2)}"
        )
    f = r.fleet
    if f is not None:
        shapes = ", ".join(f"{k} {v}" for k, v in f.shapes.items())
        lines.append(
            f"  what the reconciler recovers (durability none, {f.fault}, master killed "
            f"{f.kill_after_s:.1f} s after the first start): 2 workers --with-scheduler, 1 "
            f"reconciler at its defaults; {f.runs} runs ({shapes})"
        )
        lines.append(
            f"    {f.runs_on_victim} runs on the killed master :{f.victim}, {f.runs_lost_tail} of "
            f"them lost the last {f.events_lost} entries they held before the kill in all; lag "
            f"at the kill "
            f"{mib(f.lag_at_kill_bytes)} MiB, the promoted replica lacked >= "
            f"{mib(f.missing_on_promoted_bytes)} MiB (with a load of {FAILOVER_APPENDERS} "
            f"appenders on that master: {f.load_lost} of its {f.load_acknowledged} acknowledged "
            f"events lost); failover {f.failover_s:.1f} s"
        )
        finished = (
            f"all finished {f.finished_after_kill_s:.1f} s after the kill"
            if f.finished_after_kill_s is not None
            else f"!! {len(f.stuck)} runs NOT finished {FAILOVER_FLEET_TIMEOUT_S:g} s after the "
            f"kill (the others by {fmt(f.last_finish_after_kill_s, 1)} s)"
        )
        lines.append(f"    {f.completed}/{f.runs} runs completed; {finished}")
        recovered = ", ".join(f"{k} {v}" for k, v in f.recoveries.items()) or "none"
        lines.append(f"    reconciler recoveries ({f.recovered_runs} runs): {recovered}")
        for line in f.recovery_lines[:8]:
            lines.append(f"      {line}")
        checks = (
            "all valid, nothing recorded twice"
            if not f.log_problems
            else (f"!! {len(f.log_problems)} problems: {'; '.join(f.log_problems[:3])}")
        )
        lines.append(f"    logs (ops.checker.check_log): {checks}")
        for text in f.wrong_results + f.finished_otherwise:
            lines.append(f"    !! {text}")
        for s in f.stuck:
            where = "on the killed master" if s.on_victim else "on another master"
            tail = ", lost its tail" if s.lost_tail else ""
            lines.append(
                f"    !! unfinished {s.run_id} ({s.workflow}, {s.status}, {where}{tail}): "
                f"{s.events} events, last [{', '.join(s.last_events)}]"
            )
            lines.append(f"       open: {'; '.join(s.open_steps) or 'nothing open'}")
        if f.stuck:
            lines.append(
                "    suspected gap (a step whose completion was lost, started on a live worker, "
                f"no time limit: never retried): {'OBSERVED' if f.gap_observed else 'not seen'}"
            )
        lines.append(
            f"    process warnings during the failover: {f.process_warnings}"
            + (f", first: {f.first_warnings[0][:200]}" if f.first_warnings else "")
        )
    return lines


def describe(outcome: Outcome) -> str:
    """One scenario's figures as the lines printed under it."""
    r = outcome.result
    if r is None:
        return f"  FAILED: {outcome.error}"
    cpu = ", ".join(f"{k} {v:.0f}%" for k, v in outcome.cpu_percent_of_one_core.items())
    lines = []
    if isinstance(r, RetentionResult):
        lines += describe_retention(r)
    elif isinstance(r, FailoverResult):
        lines += describe_failover(r)
    elif isinstance(r, JanitorResult):
        lines.append(
            f"  {r.runs} due runs of {r.events_per_run} events on the {r.redis}, one sweep each "
            f"way: one at a time {fmt(r.one_at_a_time_runs_per_s, 0)} runs/s, "
            f"{r.one_at_a_time_cpu_ms_per_run:.2f} ms CPU per run; a page at once "
            f"{fmt(r.paged_runs_per_s, 0)} runs/s, {r.paged_cpu_ms_per_run:.2f} ms CPU per run "
            f"({r.speedup:.1f} x)"
        )
    elif isinstance(r, StorageResult):
        lines.append(
            f"  {r.runs} finished runs of {r.steps_per_run} steps, tiny results: "
            f"{fmt(r.small_events_per_run, 0)} events, {fmt(r.small_bytes_per_run, 0)} bytes "
            f"per run, {fmt(r.small_bytes_per_event, 0)} bytes per event"
        )
        lines.append(
            f"  {r.large_payload_bytes}-byte results: offloaded "
            f"{fmt(r.large_offloaded_bytes_per_run, 0)} bytes per run (log "
            f"{fmt(r.large_offloaded_log_bytes_per_run, 0)}, blobs "
            f"{fmt(r.large_offloaded_blob_bytes_per_run, 0)}); inline "
            f"{fmt(r.large_inline_bytes_per_run, 0)} bytes per run"
        )
    elif isinstance(r, SleepResult):
        verdict = "PASS" if r.passed else "FAIL"
        lines.append(
            f"  {r.runs} sleepers x {r.sleep_s:g} s: lateness "
            f"p50 {fmt(r.late_p50_ms, 0)} ms, p99 {fmt(r.late_p99_ms, 0)} ms, "
            f"max {fmt(r.late_max_ms, 0)} ms (min {fmt(r.late_min_ms, 0)} ms) -> "
            f"{verdict} (target: max <= {SLEEP_TARGET_MS:g} ms)"
        )
        lines.append(
            f"  wake -> run_completed p50 {fmt(r.wake_to_run_completed_p50_ms, 0)} ms; "
            f"slept (wait_created -> wait_completed) min {fmt(r.slept_min_ms, 0)}, p50 "
            f"{fmt(r.slept_p50_ms, 0)}, max {fmt(r.slept_max_ms, 0)} ms; "
            f"wall {r.wall_s:.2f} s"
        )
    else:
        lines.append(
            f"  {r.steps} steps in {r.wall_s:.2f} s = {fmt(r.steps_per_s, 0)} steps/s; "
            f"step latency p50 {fmt(r.step_p50_ms, 0)} ms, p99 {fmt(r.step_p99_ms, 0)} ms"
        )
        if isinstance(r, ManyResult):
            lines.append(
                f"  {r.runs} runs: {fmt(r.runs_per_s, 1)} runs/s; run duration p50 "
                f"{fmt(r.run_p50_ms, 0)} ms, p99 {fmt(r.run_p99_ms, 0)} ms"
            )
        if isinstance(r, ChainResult):
            lines.append(
                f"  step-to-step (completed -> next started) p50 "
                f"{fmt(r.step_to_step_p50_ms, 0)} ms, p99 {fmt(r.step_to_step_p99_ms, 0)} "
                f"ms; full cycle p50 {fmt(r.cycle_p50_ms, 0)} ms, mean "
                f"{fmt(r.cycle_mean_ms, 2)} ms"
            )
            hop = r.hop_mean_ms
            lines.append(
                f"  cycle split (means): schedule {fmt(hop['schedule'], 2)} ms (completed -> next "
                f"created), dispatch {fmt(hop['dispatch'], 2)} ms (created -> started), execute "
                f"{fmt(hop['execute'], 2)} ms (started -> completed)"
            )
        if isinstance(r, SoakResult):
            start, end = r.rss_kib_at_tenth or {}, r.rss_kib_at_end or {}
            per = ", ".join(
                f"{k} {fmt((start.get(k) or 0) / 1024, 1)} -> {fmt((end.get(k) or 0) / 1024, 1)} "
                f"MiB ({fmt(g, 1)} %)"
                for k, g in r.rss_growth_percent.items()
            )
            verdict = "PASS" if r.passed else "FAIL"
            lines.append(f"  RSS a tenth of the way -> end: {per} -> {verdict} (target < 10 %)")
            lines.append(f"  RSS (MiB, largest process) at each tenth: {r.rss_mib_by_tenth}")
        if isinstance(r, LongResult):
            lines.append(
                f"  first 100 vs last 100: step p50 {fmt(r.first_step_p50_ms, 0)} -> "
                f"{fmt(r.last_step_p50_ms, 0)} ms; step-to-step p50 "
                f"{fmt(r.first_gap_p50_ms, 0)} -> {fmt(r.last_gap_p50_ms, 0)} ms "
                f"(x{fmt(r.gap_ratio, 2)}); cycle mean {fmt(r.first_cycle_mean_ms, 2)} -> "
                f"{fmt(r.last_cycle_mean_ms, 2)} ms (x{fmt(r.cycle_mean_ratio, 2)})"
            )
            lines.append(
                f"  scheduler CPU per step: first fifth of the run "
                f"{fmt(r.scheduler_cpu_ms_per_step_first_fifth, 2)} ms, last fifth "
                f"{fmt(r.scheduler_cpu_ms_per_step_last_fifth, 2)} ms "
                f"(x{fmt(r.scheduler_cpu_ratio, 2)})"
            )
        lines.append(f"  ratio: {r.ratio_name} = {fmt(r.ratio_to_floor, 3)}")
    lines.append(f"  CPU (% of one core): {cpu}")
    checks = getattr(r, "integrity", {})
    suspicious = isinstance(checks, Integrity) and checks.suspicious()
    if not r.correct or suspicious:
        shown = dataclasses.asdict(checks) if isinstance(checks, Integrity) else checks
        lines.append(f"  !! result correct: {r.correct}; integrity: {shown}")
    return "\n".join(lines)


async def slow_commands(settings: Settings) -> list[dict[str, Any]]:
    """This namespace's entries in Redis's SLOWLOG (over slowlog-log-slower-than, 10 ms by
    default): one Lua call blocks every other client for its whole duration."""
    found: list[dict[str, Any]] = []
    with contextlib.suppress(Exception):
        client = redis_client(settings.redis_url)
        try:
            for entry in await client.slowlog_get(128):
                command = entry.get("command", b"")
                text = command.decode(errors="replace") if isinstance(command, bytes) else command
                if settings.namespace in str(text):
                    name = str(text).split(" ", 1)[0]
                    found.append({"ms": entry["duration"] / 1000.0, "command": name})
        finally:
            await client.aclose()
    return found


def code_version() -> dict[str, Any]:
    """Which code was measured: HEAD and any uncommitted product files (the tree is shared)."""
    version: dict[str, Any] = {"commit": "?", "uncommitted": []}
    with contextlib.suppress(Exception):
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        )
        version["commit"] = head.stdout.strip() or "?"
        status = subprocess.run(
            ["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True
        )
        version["uncommitted"] = [
            line[3:] for line in status.stdout.splitlines() if not line[3:].startswith("bench/")
        ]
    return version


def machine_info() -> dict[str, Any]:
    mem_kb = 0
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    return {
        "nproc": os.cpu_count(),
        "memory_gib": round(mem_kb / 1024 / 1024, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_avg_at_start": os.getloadavg(),
    }


async def server_versions(settings: Settings) -> dict[str, str]:
    versions = {"rabbitmq": "?", "redis": "?"}
    with contextlib.suppress(Exception):
        connection = await connect_first(settings.amqp_url)
        try:
            transport: Any = connection.transport
            props = transport.connection.server_properties
            raw = props.get("version", "?")
            versions["rabbitmq"] = raw.decode() if isinstance(raw, bytes) else str(raw)
        finally:
            await connection.close()
    with contextlib.suppress(Exception):
        client = redis_client(settings.redis_url)
        try:
            info = await client.info("server")
            versions["redis"] = str(info.get("redis_version", "?"))
        finally:
            await client.aclose()
    return versions


def failover_summary(r: FailoverResult) -> str:
    """The failover scenario in one line: acknowledged appends lost by mode, the fleet."""
    if r.skipped is not None:
        return f"skipped: {r.skipped}"
    parts = [f"{round_label(x)}: {x.lost}/{x.acknowledged} lost" for x in r.rounds]
    text = "acknowledged appends " + "; ".join(parts)
    f = r.fleet
    if f is not None:
        text += (
            f"; fleet: {f.completed}/{f.runs} runs completed, "
            f"{sum(f.recoveries.values())} recoveries"
            + (f", {len(f.stuck)} STUCK" if f.stuck else "")
        )
    return text


def summary_table(floor: Floor, outcomes: dict[str, Outcome]) -> str:
    header = (
        f"{'scenario':<10} {'steps':>6} {'wall s':>7} {'steps/s':>8} {'p50 ms':>7} "
        f"{'p99 ms':>7}  ratio"
    )
    rows = [header, "-" * len(header) + "-" * 40]
    rows.append(
        f"{'floor':<10} {floor.messages:>6} {'':>7} {fmt(floor.amqp_pipelined_msgs_per_s, 0):>8} "
        f"{fmt(floor.amqp_rtt_p50_ms, 2):>7} {fmt(floor.amqp_rtt_p99_ms, 2):>7}  "
        f"AMQP msgs/s (all in flight), round trip p50/p99; Redis XADD p50 "
        f"{fmt(floor.redis_xadd_p50_ms, 3)} ms, {fmt(floor.redis_xadd_ops_per_s, 0)} ops/s"
    )
    for name, outcome in outcomes.items():
        r = outcome.result
        if r is None:
            rows.append(f"{name:<10} FAILED: {(outcome.error or '')[:300]}")
            continue
        mark = "  [DISTURBED: see above]" if outcome.disturbed else ""
        if isinstance(r, RetentionResult):
            rows.append(
                f"{name:<10} {r.runs:>6} {r.wall_s:>7.2f} {fmt(r.runs_per_s, 0):>8} {'-':>7} "
                f"{'-':>7}  window medians after warm-up: used_memory spread "
                f"{percent(r.spread['used_memory'])}, runs held {percent(r.spread['runs'])} "
                f"-> {retention_verdict(r)} (runs/s in the steps/s column){mark}"
            )
            continue
        if isinstance(r, FailoverResult):
            rows.append(
                f"{name:<10} {'-':>6} {r.wall_s:>7.2f} {'-':>8} {'-':>7} {'-':>7}  "
                f"{failover_summary(r)}{mark}"
            )
            continue
        if isinstance(r, JanitorResult):
            rows.append(
                f"{name:<10} {r.runs:>6} {r.wall_s:>7.2f} {fmt(r.paged_runs_per_s, 0):>8} "
                f"{'-':>7} {'-':>7}  runs removed/s a page at once (steps/s column), "
                f"{r.speedup:.1f} x one at a time ({fmt(r.one_at_a_time_runs_per_s, 0)}/s){mark}"
            )
            continue
        if isinstance(r, StorageResult):
            rows.append(
                f"{name:<10} {r.runs * 2:>6} {r.wall_s:>7.2f} {'-':>8} {'-':>7} {'-':>7}  "
                f"{fmt(r.small_bytes_per_event, 0)} B/event, {fmt(r.small_bytes_per_run, 0)} "
                f"B/run; {r.large_payload_bytes} B results: "
                f"{fmt(r.large_offloaded_bytes_per_run, 0)} B/run offloaded, "
                f"{fmt(r.large_inline_bytes_per_run, 0)} B/run inline{mark}"
            )
            continue
        if isinstance(r, SleepResult):
            verdict = "PASS" if r.passed else "FAIL"
            rows.append(
                f"{name:<10} {r.runs:>6} {r.wall_s:>7.2f} {'-':>8} "
                f"{fmt(r.late_p50_ms, 0):>7} {fmt(r.late_p99_ms, 0):>7}  lateness; max "
                f"{fmt(r.late_max_ms, 0)} ms <= {SLEEP_TARGET_MS:g} ms: {verdict}{mark}"
            )
            continue
        p50 = r.step_to_step_p50_ms if isinstance(r, ChainResult) else r.step_p50_ms
        p99 = r.step_to_step_p99_ms if isinstance(r, ChainResult) else r.step_p99_ms
        rows.append(
            f"{name:<10} {r.steps:>6} {r.wall_s:>7.2f} {fmt(r.steps_per_s, 0):>8} "
            f"{fmt(p50, 0):>7} {fmt(p99, 0):>7}  {fmt(r.ratio_to_floor, 3)} "
            f"({r.ratio_name}){r.summary_extra if isinstance(r, LongResult) else ''}{mark}"
        )
    return "\n".join(rows)


def retention_verdict(r: RetentionResult) -> str:
    """PASS or FAIL; too few windows of steady state (a --quick run on a fast machine)
    are not a verdict either way."""
    if r.windows < RETENTION_MIN_WINDOWS:
        return f"NOT JUDGED ({r.windows} window(s) of steady state; the full size judges)"
    return "PASS" if r.flat else "FAIL"
