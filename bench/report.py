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

from bench.config import ROOT, SLEEP_TARGET_MS
from bench.floors import Floor
from bench.results import (
    ChainResult,
    Integrity,
    LongResult,
    ManyResult,
    Outcome,
    RetentionResult,
    SleepResult,
    SoakResult,
    StorageResult,
)
from bench.stats import fmt


def describe(outcome: Outcome) -> str:
    """One scenario's figures as the lines printed under it."""
    r = outcome.result
    if r is None:
        return f"  FAILED: {outcome.error}"
    cpu = ", ".join(f"{k} {v:.0f}%" for k, v in outcome.cpu_percent_of_one_core.items())
    lines = []
    if isinstance(r, RetentionResult):
        verdict = "PASS" if r.growth < 0.10 else "FAIL"
        lines.append(
            f"  {r.runs} one-step runs with a {r.retention_s:g} s retention in {r.wall_s:.1f} s "
            f"({fmt(r.runs_per_s, 0)} runs/s); {r.removed} removed, {r.left_runs} left"
        )
        lines.append(
            f"  used_memory: {r.used_memory_start / 2**20:.1f} MiB before; after the first "
            f"retention period ({r.samples} samples) first {r.steady_first / 2**20:.1f}, min "
            f"{r.steady_min / 2**20:.1f}, max {r.steady_max / 2**20:.1f}, last "
            f"{r.steady_last / 2**20:.1f} MiB; {r.used_memory_end / 2**20:.1f} MiB at the end"
        )
        lines.append(f"  growth {r.growth * 100:.1f} % -> {verdict} (target: flat within 10 %)")
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
                f"{'-':>7}  used_memory growth {r.growth * 100:.1f} % after the first "
                f"retention period (runs/s in the steps/s column){mark}"
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
