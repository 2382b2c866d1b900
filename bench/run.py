"""The ledgerflow benchmark: real worker and scheduler processes on real RabbitMQ and Redis.

``python -m bench.run [--quick] [--only NAME ...]`` (``make bench``).

Why it is built this way:

* The machine is shared and noisy, so an absolute figure means little on its own.
  Every run first measures a *floor* (``bench.floors``) - what bare aio-pika
  (confirmed publish on a quorum queue, consume, ack) and bare redis-py (XADD)
  achieve here, now - and reports each ledgerflow figure next to it as a ratio.
  It also samples the CPU time of every process involved (and of the whole
  machine, ``bench.resources``), so a reader can tell which component bounded a
  number, and how much of the machine others were using.
* Latencies come from the run's own log (``Event.ts``, ms from the Redis clock), so
  they are what the product recorded, not what the benchmark's client saw
  (``bench.stats``, ``bench.scenarios``).
* It uses its own namespace ``bench-<random>`` and deletes every Redis key, queue
  and exchange of it at the end, even when a scenario fails or it is interrupted
  (``ledgerflow.testing.namespace``).

This module only parses the arguments and runs the rest in order; what is
printed and recorded is ``bench.report``'s, with each scenario's typed result
(``bench.results``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import importlib.util
import json
import secrets
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

from ledgerflow.eventlog.names import Names
from ledgerflow.eventlog.settings import Settings
from ledgerflow.worker.backend import connect

import ledgerflow as lf
from bench.config import (
    IDLE_SECONDS,
    RESULTS_JSON,
    ROOT,
    SCENARIOS,
    SCHEDULERS,
    WORKERS,
    Layout,
    Sizes,
)
from bench.failover import scenario_failover
from bench.fleet import log_line_counts, make_fleet, new_log_lines, stop, wait_until_consuming
from bench.floors import Floor, measure_floor
from bench.janitor import scenario_janitor
from bench.report import (
    code_version,
    describe,
    machine_info,
    server_versions,
    slow_commands,
    summary_table,
)
from bench.resources import CpuMeter, find_server_pids
from bench.results import Outcome, RetentionResult
from bench.retention import scenario_retention
from bench.scenarios import SCENARIO_FNS, Context, ScenarioFn, queue_depths
from bench.stats import fmt
from ledgerflow.cli.supervisor import run_with_loop
from ledgerflow.ops.logs import configure_logging
from ledgerflow.testing.namespace import delete_namespace

# The janitor, retention and failover scenarios have modules of their own (their own Redis).
SCENARIO_BY_NAME: dict[str, ScenarioFn] = {
    **SCENARIO_FNS,
    "janitor": scenario_janitor,
    "retention": scenario_retention,
    "failover": scenario_failover,
}


@contextlib.asynccontextmanager
async def namespace_cleanup(settings: Settings, floor_queue: str) -> AsyncIterator[None]:
    """Whatever happens inside, delete the namespace afterwards."""
    try:
        yield
    finally:
        deleted = await delete_namespace(
            settings.amqp_url,
            settings.redis_url,
            settings.namespace,
            [floor_queue],
            best_effort=True,
        )
        left = "?" if deleted.redis_keys_left is None else deleted.redis_keys_left
        print(
            f"\ncleanup: namespace {settings.namespace}: {deleted.redis_keys} Redis keys, "
            f"{deleted.queues} queues, {deleted.exchanges} exchanges deleted; "
            f"{left} keys left"
        )
        for error in deleted.errors:
            print(f"cleanup: {error}")


async def bench(args: argparse.Namespace) -> int:
    sizes = Sizes.pick(args.quick)
    layout = Layout(workers=args.workers, schedulers=args.schedulers)
    only = args.only or list(SCENARIOS)
    namespace = f"bench-{secrets.token_hex(4)}"
    settings = Settings.from_env(namespace=namespace)
    names = Names(namespace)
    floor_queue = f"{namespace}.bench-floor"
    log_dir = Path(tempfile.mkdtemp(prefix=f"lf-{namespace}-"))
    report: dict[str, Any] = {
        "command": " ".join(["python -m bench.run", *sys.argv[1:]]),
        "quick": args.quick,
        "namespace": namespace,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine_info(),
        "code": code_version(),
        "event_loop": args.loop,
        "processes": {
            "workers": layout.workers,
            "worker_concurrency": layout.concurrency,
            "schedulers": layout.schedulers,
        },
        "sizes": sizes.__dict__,
    }
    outcomes: dict[str, Outcome] = {}
    failed = False
    fleet = make_fleet(settings, log_dir, loop=args.loop, layout=layout)
    print(
        f"ledgerflow benchmark{' (--quick)' if args.quick else ''}: namespace {namespace}, "
        f"event loop {report['event_loop']}"
    )
    async with namespace_cleanup(settings, floor_queue):
        report["servers"] = await server_versions(settings)
        info, code = report["machine"], report["code"]
        print(f"code: {code['commit']}, uncommitted product files: {code['uncommitted'] or 'none'}")
        print(
            f"machine: {info['nproc']} CPUs, {info['memory_gib']} GiB, Python {info['python']}, "
            f"RabbitMQ {report['servers']['rabbitmq']}, Redis {report['servers']['redis']}, "
            f"load average {', '.join(f'{x:.2f}' for x in info['load_avg_at_start'])}"
        )
        async with connect(settings) as backends:
            client = lf.Client(backends.store, backends.broker)
            try:
                fleet.start_all()
                ready = await wait_until_consuming(fleet, settings, names, layout)
                print(
                    f"processes: {layout.describe()}, consuming after {ready:.1f} s; "
                    f"logs in {log_dir}"
                )
                components = {p.name: [p.pid] for p in fleet.procs}
                components.update(find_server_pids())
                cpu = CpuMeter(components)

                # Idle first: what the processes cost doing nothing (the timer loop polls),
                # which is also the background under which the floor is measured.
                before = cpu.snapshot()
                began = time.perf_counter()
                await asyncio.sleep(IDLE_SECONDS)
                idle = CpuMeter.percent(before, cpu.snapshot(), time.perf_counter() - began)
                report["idle_cpu_percent_of_one_core"] = idle
                print(
                    f"idle for {IDLE_SECONDS:g} s, CPU (% of one core): "
                    + ", ".join(f"{k} {v:.0f}%" for k, v in idle.items())
                )

                print(
                    f"\n[floor] bare aio-pika x{sizes.floor_amqp}, bare XADD x{sizes.floor_redis}"
                )
                floor = await measure_floor(settings, sizes, floor_queue)
                report["floor"] = floor.__dict__
                print(
                    f"  AMQP (quorum queue, persistent, confirms): round trip p50 "
                    f"{fmt(floor.amqp_rtt_p50_ms, 2)} ms, p99 {fmt(floor.amqp_rtt_p99_ms, 2)} ms, "
                    f"{fmt(floor.amqp_sequential_msgs_per_s, 0)} msgs/s one at a time; "
                    f"{fmt(floor.amqp_pipelined_msgs_per_s, 0)} msgs/s all in flight"
                )
                print(
                    f"  Redis XADD: p50 {fmt(floor.redis_xadd_p50_ms, 3)} ms, p99 "
                    f"{fmt(floor.redis_xadd_p99_ms, 3)} ms, {fmt(floor.redis_xadd_ops_per_s, 0)} "
                    "ops/s sequential"
                )
                ctx = Context(
                    client=client,
                    store=backends.store,
                    sizes=sizes,
                    floor=floor,
                    names=names,
                    log_dir=log_dir,
                    redis_url=settings.redis_url,
                    settings=settings,
                    loop=args.loop,
                    layout=layout,
                    # With --with-scheduler the workers are the schedulers too.
                    scheduler_pids=[
                        p.pid
                        for p in fleet.procs
                        if p.role == "scheduler" or layout.schedulers == 0
                    ],
                    process_pids={p.name: p.pid for p in fleet.procs},
                )
                for name in only:
                    print(f"\n[{name}] {SCENARIO_BY_NAME[name].__doc__}")
                    lines_before = log_line_counts(fleet)
                    before = cpu.snapshot()
                    began = time.perf_counter()
                    try:
                        result = await SCENARIO_BY_NAME[name](ctx)
                    except Exception as exc:  # report it, run the others, exit non-zero
                        failed = True
                        outcome = Outcome(None, error=f"{type(exc).__name__}: {exc}")
                        print(f"  FAILED: {type(exc).__name__}: {exc}")
                    else:
                        # The retention scenario runs processes of its own and measures
                        # their CPU itself, over its paced phase.
                        outcome = Outcome(
                            result,
                            cpu_percent_of_one_core=result.cpu_percent_of_one_core
                            if isinstance(result, RetentionResult)
                            else CpuMeter.percent(
                                before, cpu.snapshot(), time.perf_counter() - began
                            ),
                        )
                        print(describe(outcome))
                    disturbed = new_log_lines(fleet, lines_before)
                    if isinstance(outcome.result, RetentionResult):
                        disturbed += outcome.result.process_warnings
                    outcome = dataclasses.replace(outcome, disturbed=disturbed)
                    outcomes[name] = outcome
                    if disturbed:
                        print(
                            f"  !! DISTURBED: the processes logged {len(disturbed)} warning/error "
                            f"lines during this scenario (a broker restart by another tenant?); "
                            f"first: {disturbed[0][:200]}"
                        )
                    if not outcome.correct:
                        failed = True
                report["queue_depths_at_end"] = await queue_depths(client, names)
                report["redis_slowlog"] = await slow_commands(settings)
                # The floor again, to show how much the machine drifted during the run.
                try:
                    end_floor = await measure_floor(settings, sizes, floor_queue)
                    report["floor_at_end"] = end_floor.__dict__
                except Exception as exc:
                    print(f"\nfloor at the end failed: {type(exc).__name__}: {exc}")
            finally:
                stop(fleet)
        report["exit_codes"] = {p.name: p.returncode for p in fleet.procs}
        problems = fleet.log_lines()
        report["process_log_lines"] = {k: len(v) for k, v in problems.items()}

    report["scenarios"] = {name: outcome.to_json() for name, outcome in outcomes.items()}
    report["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    RESULTS_JSON.write_text(json.dumps(report, indent=2, default=str) + "\n")
    end = report.get("floor_at_end") or Floor().__dict__
    print(
        f"\nfloor at the end: AMQP round trip p50 {fmt(end['amqp_rtt_p50_ms'], 2)} ms, "
        f"{fmt(end['amqp_pipelined_msgs_per_s'], 0)} msgs/s in flight; XADD p50 "
        f"{fmt(end['redis_xadd_p50_ms'], 3)} ms (drift check; ratios use the first floor)"
    )
    for label, lines in problems.items():
        if lines:
            print(f"{label}: {len(lines)} warning/error log lines, first: {lines[0][:300]}")
    print(f"exit codes: {report['exit_codes']}")
    print(f"queue depths at the end: {report.get('queue_depths_at_end')}")
    slow = report.get("redis_slowlog") or []
    print(
        f"Redis SLOWLOG entries of this namespace: {len(slow)}"
        + (f", slowest {max(e['ms'] for e in slow):.1f} ms ({slow[0]['command']})" if slow else "")
    )
    print("\nSUMMARY\n" + summary_table(Floor(**report["floor"]), outcomes))
    print(f"\nresults written to {RESULTS_JSON.relative_to(ROOT)}")
    if not failed:
        shutil.rmtree(log_dir, ignore_errors=True)
    else:
        print(f"process logs kept in {log_dir}")
    return 1 if failed else 0


def _count(low: int, high: int) -> Callable[[str], int]:
    """An argparse type: an integer from ``low`` to ``high``, else a usage error."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is not from {low} to {high}")
        return value

    return parse


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run",
        description="Benchmark ledgerflow on real RabbitMQ and Redis; the floor always runs.",
    )
    parser.add_argument("--quick", action="store_true", help="smaller sizes (about a minute)")
    parser.add_argument(
        "--only", nargs="+", choices=SCENARIOS, metavar="NAME", help=f"of {', '.join(SCENARIOS)}"
    )
    parser.add_argument(
        "--workers",
        type=_count(1, 32),
        default=WORKERS,
        metavar="N",
        help=f"worker processes (default {WORKERS}); for scaling runs",
    )
    parser.add_argument(
        "--schedulers",
        type=_count(0, 32),
        default=SCHEDULERS,
        metavar="N",
        help=f"scheduler processes; 0: each worker runs --with-scheduler (default {SCHEDULERS})",
    )
    parser.add_argument(
        "--loop",
        choices=("asyncio", "uvloop"),
        default="uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
        help="event loop of the processes and of the benchmark itself, floor included "
        "(default: uvloop when installed, as the CLI does)",
    )
    return parser.parse_args(argv)


async def amain(args: argparse.Namespace) -> int:
    """SIGTERM cancels the benchmark like Ctrl-C does, so cleanup still runs."""
    task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    if task is not None:
        loop.add_signal_handler(signal.SIGTERM, task.cancel)
    return await bench(args)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # The benchmark's own process (the client, the producers) reports warnings only.
    configure_logging("warning")
    try:
        return run_with_loop(amain(args), args.loop)  # the same choice the CLI makes
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("interrupted; the namespace was cleaned up", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
