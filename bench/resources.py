"""CPU and memory of the processes involved, from /proc: what bounded a figure.

The machine is shared, so each scenario reports the CPU of every component
(workers, schedulers, RabbitMQ, Redis, the benchmark's own client) and of the
whole machine; "others" is what nobody here used.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_cpu_seconds(pid: int) -> float | None:
    """utime + stime of one process (children excluded), from /proc."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def machine_busy_seconds() -> float:
    """CPU-seconds the whole machine spent busy (all cores), from /proc/stat."""
    parts = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = parts[3] + (parts[4] if len(parts) > 4 else 0)
    return (sum(parts[:8]) - idle) / CLK_TCK


def find_server_pids() -> dict[str, list[int]]:
    """PIDs of the local RabbitMQ (beam.smp) and Redis, to account for their CPU."""
    found: dict[str, list[int]] = {"rabbitmq": [], "redis": []}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            comm = (entry / "comm").read_text().strip()
        except OSError:
            continue
        if comm == "beam.smp":
            found["rabbitmq"].append(int(entry.name))
        elif comm == "redis-server":
            found["redis"].append(int(entry.name))
    return found


class CpuMeter:
    """Snapshots CPU time per component so each scenario can say what was busy."""

    def __init__(self, components: dict[str, list[int]]) -> None:
        self.components = components

    def snapshot(self) -> dict[str, float]:
        snap = {"machine": machine_busy_seconds(), "bench client": time.process_time()}
        for name, pids in self.components.items():
            snap[name] = sum(proc_cpu_seconds(pid) or 0.0 for pid in pids)
        return snap

    @staticmethod
    def percent(before: dict[str, float], after: dict[str, float], wall: float) -> dict[str, float]:
        """Per component, % of one core over ``wall``; "others" is what nobody here used."""
        used = {k: (after[k] - before[k]) / wall * 100.0 for k in before if wall > 0}
        accounted = sum(v for k, v in used.items() if k != "machine")
        used["others"] = max(0.0, used.get("machine", 0.0) - accounted)
        return {k: round(v, 1) for k, v in used.items()}


def rss_kib(pid: int) -> int | None:
    """Resident set size from /proc, in KiB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None
