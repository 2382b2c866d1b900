"""How throughput grows with workers and schedulers, and what each component costs per step.

``python -m bench.scaling [--quick] [--layouts 1:0 2:0 4:0 2:1 2:2] [--only many fanout]``
(``make bench-scaling``) runs ``bench.run`` once per process layout (WORKERS:SCHEDULERS,
0 schedulers meaning every worker runs ``--with-scheduler``) and prints, per scenario
and layout, the throughput and the CPU milliseconds each component spent per step.

Why CPU per step: this machine has two shared cores, so adding processes past two
mostly shows the machine running out, not how ledgerflow scales. The CPU a
component spends per step hardly depends on how many cores there are, so it is
the figure that carries over to a bigger deployment: a component given C cores
finishes at most C x 1000 / (its ms per step) steps a second, and Redis (one
thread per server) at most 1000 / (its ms per step) per master. ``docs/scaling.md``
turns these into a guide; the model below prints the same arithmetic.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.config import ROOT

DEFAULT_LAYOUTS = ("1:0", "2:0", "4:0", "2:1", "2:2")
DEFAULT_SCENARIOS = ("many", "fanout", "chain")
GROUPS = {
    "workers and schedulers": ("worker-", "scheduler-"),
    "redis": ("redis",),
    "rabbitmq": ("rabbitmq",),
    "bench client": ("bench client",),
}


@dataclass(frozen=True)
class Layout:
    workers: int
    schedulers: int

    @classmethod
    def parse(cls, text: str) -> Layout:
        workers, _, schedulers = text.partition(":")
        try:
            layout = cls(int(workers), int(schedulers or "0"))
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r}: expected WORKERS:SCHEDULERS") from None
        if not (1 <= layout.workers <= 32 and 0 <= layout.schedulers <= 32):
            raise argparse.ArgumentTypeError(f"{text!r}: 1-32 workers, 0-32 schedulers")
        return layout

    def __str__(self) -> str:
        if self.schedulers == 0:
            return f"{self.workers} w (each its own scheduler)"
        return f"{self.workers} w + {self.schedulers} s"


@dataclass(frozen=True)
class Row:
    layout: Layout
    scenario: str
    steps_per_s: float
    ms_per_step: dict[str, float]  # CPU ms per step, by component group
    machine_percent: float


def cpu_ms_per_step(result: dict[str, Any]) -> dict[str, float]:
    """CPU milliseconds per step of each component group, from one scenario's result."""
    cpu: dict[str, float] = result.get("cpu_percent_of_one_core") or {}
    steps = result.get("steps") or 0
    wall = result.get("wall_s") or 0.0
    if not steps or not wall:
        return {}
    out: dict[str, float] = {}
    for group, prefixes in GROUPS.items():
        percent = sum(v for k, v in cpu.items() if k.startswith(prefixes))
        out[group] = percent / 100 * wall * 1000 / steps
    return out


def run_layout(layout: Layout, scenarios: Sequence[str], quick: bool) -> dict[str, Any]:
    """One ``bench.run`` in a child process; its JSON results."""
    with tempfile.TemporaryDirectory(prefix="lf-scaling-") as directory:
        path = Path(directory) / "results.json"
        command = [
            sys.executable,
            "-m",
            "bench.run",
            "--only",
            *scenarios,
            "--workers",
            str(layout.workers),
            "--schedulers",
            str(layout.schedulers),
            "--results",
            str(path),
            *(["--quick"] if quick else []),
        ]
        print(f"\n=== {layout}: {' '.join(command[1:])}", flush=True)
        done = subprocess.run(command, cwd=ROOT, check=False)
        if not path.exists():
            raise RuntimeError(f"bench.run for {layout} wrote no results (exit {done.returncode})")
        loaded: dict[str, Any] = json.loads(path.read_text())
        loaded["exit_code"] = done.returncode
        return loaded


def rows_of(layout: Layout, report: dict[str, Any]) -> list[Row]:
    rows = []
    for name, result in report.get("scenarios", {}).items():
        outcome = result.get("result") or result
        if not outcome.get("steps_per_s"):
            continue
        cpu = outcome.get("cpu_percent_of_one_core") or result.get("cpu_percent_of_one_core")
        merged = {**outcome, "cpu_percent_of_one_core": cpu}
        rows.append(
            Row(
                layout=layout,
                scenario=name,
                steps_per_s=float(outcome["steps_per_s"]),
                ms_per_step=cpu_ms_per_step(merged),
                machine_percent=float((cpu or {}).get("machine", 0.0)),
            )
        )
    return rows


def table(rows: Sequence[Row]) -> str:
    groups = list(GROUPS)
    lines = [
        "| scenario | layout | steps/s | machine CPU % | "
        + " | ".join(f"{g} ms/step" for g in groups)
        + " |",
        "|---|---|---|---|" + "---|" * len(groups),
    ]
    for row in sorted(rows, key=lambda r: (r.scenario, r.layout.workers, r.layout.schedulers)):
        cells = " | ".join(f"{row.ms_per_step.get(g, 0.0):.3f}" for g in groups)
        lines.append(
            f"| {row.scenario} | {row.layout} | {row.steps_per_s:,.0f} | "
            f"{row.machine_percent:.0f} | {cells} |"
        )
    return "\n".join(lines)


def model(rows: Sequence[Row]) -> str:
    """Per scenario, the ceiling each component puts on steps/s, from its median cost."""
    out = []
    for scenario in sorted({r.scenario for r in rows}):
        costs: dict[str, list[float]] = {}
        for row in rows:
            if row.scenario == scenario:
                for group, ms in row.ms_per_step.items():
                    costs.setdefault(group, []).append(ms)
        median = {g: sorted(v)[len(v) // 2] for g, v in costs.items() if v}
        python = median.get("workers and schedulers", 0.0)
        redis = median.get("redis", 0.0)
        rabbit = median.get("rabbitmq", 0.0)
        out.append(
            f"{scenario}: workers+schedulers {python:.3f} ms/step -> "
            f"{1000 / python if python else 0:,.0f} steps/s per core; "
            f"Redis {redis:.3f} ms/step -> {1000 / redis if redis else 0:,.0f} steps/s per "
            f"master (one thread); RabbitMQ {rabbit:.3f} ms/step -> "
            f"{1000 / rabbit if rabbit else 0:,.0f} steps/s per core"
        )
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scaling", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="bench.run's smaller sizes")
    parser.add_argument(
        "--layouts",
        nargs="+",
        type=Layout.parse,
        default=[Layout.parse(t) for t in DEFAULT_LAYOUTS],
        metavar="W:S",
        help=f"process layouts (default {' '.join(DEFAULT_LAYOUTS)})",
    )
    parser.add_argument(
        "--only",
        nargs="+",
        default=list(DEFAULT_SCENARIOS),
        metavar="NAME",
        help=f"bench.run scenarios (default {' '.join(DEFAULT_SCENARIOS)})",
    )
    args = parser.parse_args(argv)
    rows: list[Row] = []
    failed = False
    for layout in args.layouts:
        report = run_layout(layout, args.only, args.quick)
        failed = failed or report["exit_code"] != 0
        rows += rows_of(layout, report)
    print("\nSCALING (CPU ms per step: the component's CPU time over the scenario / steps)\n")
    print(table(rows))
    print("\nMODEL (median cost over the layouts; a component's ceiling = cores x 1000 / ms)\n")
    print(model(rows))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
