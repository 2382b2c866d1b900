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

``--redis-cluster`` (``make bench-cluster``) runs the scenarios twice in one run, on a
redis-server of its own and on a local Redis Cluster, and compares them; then it
counts many runs' keys per master (``bench.cluster``, ``bench.distribution``).

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ledgerflow.eventlog.settings import Settings
from ledgerflow.worker.backend import connect

import ledgerflow as lf
from bench.cluster import (
    CLUSTER_BASE_PORT,
    CLUSTER_SCENARIOS,
    OWN_REDIS_SCENARIOS,
    PassFigures,
    cluster_layout,
    compare,
    comparison_table,
)
from bench.config import (
    IDLE_SECONDS,
    RESULTS_CLUSTER_JSON,
    RESULTS_JSON,
    ROOT,
    SCENARIOS,
    SCHEDULERS,
    WORKERS,
    Layout,
    Sizes,
)
from bench.distribution import DistributionResult, describe_distribution, key_distribution
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
from bench.retention import own_redis, scenario_retention
from bench.scenarios import SCENARIO_FNS, Context, ScenarioFn, queue_depths
from bench.stats import fmt
from ledgerflow.cli.supervisor import run_with_loop
from ledgerflow.ops.logs import configure_logging
from ledgerflow.testing.fleet import Fleet
from ledgerflow.testing.namespace import delete_namespace
from tests.cluster.redis_cluster import ClusterUnavailable, started

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


def base_report(
    args: argparse.Namespace, sizes: Sizes, layout: Layout, namespace: str
) -> dict[str, Any]:
    """The head of results.json: what was run, where, on which code."""
    return {
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


@dataclass
class Rig:
    """The benchmark's processes on one set of servers, ready for scenarios.

    ``report`` is this rig's part of results.json (in its order); ``outcomes``
    collects the scenarios run on it.
    """

    label: str
    report: dict[str, Any]
    ctx: Context
    fleet: Fleet
    cpu: CpuMeter
    outcomes: dict[str, Outcome] = dataclasses.field(default_factory=dict)

    @property
    def failed(self) -> bool:
        return any(not outcome.correct for outcome in self.outcomes.values())

    async def run(self, name: str) -> Outcome:
        outcome = await run_scenario(name, self.ctx, self.fleet, self.cpu, self.label)
        self.outcomes[name] = outcome
        return outcome


@contextlib.asynccontextmanager
async def rig(
    args: argparse.Namespace,
    *,
    sizes: Sizes,
    layout: Layout,
    settings: Settings,
    log_dir: Path,
    report: dict[str, Any],
    servers: dict[str, list[int]] | None = None,
    label: str = "",
) -> AsyncIterator[Rig]:
    """Start the fleet on ``settings``' servers and measure the floor; on the way out, the
    floor again, stop the fleet and delete the namespace, whatever happened inside.

    ``servers`` names the Redis processes whose CPU is this rig's (the benchmark's
    own redis-server or cluster nodes); by default every local redis-server counts.
    """
    floor_queue = f"{settings.namespace}.bench-floor"
    fleet = make_fleet(settings, log_dir, loop=args.loop, layout=layout)
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
            # The layout the namespace adopted (on a cluster: 16 shards per master), so
            # the scenarios address a run's keys where the processes put them.
            names = backends.names
            try:
                fleet.start_all()
                ready = await wait_until_consuming(fleet, settings, names, layout)
                print(
                    f"processes: {layout.describe()}, consuming after {ready:.1f} s; "
                    f"logs in {log_dir}"
                )
                components = {p.name: [p.pid] for p in fleet.procs}
                components.update(find_server_pids())
                components.update(servers or {})
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
                done = Rig(label, report, ctx, fleet, cpu)
                yield done
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

    report["scenarios"] = {name: outcome.to_json() for name, outcome in done.outcomes.items()}
    end = report.get("floor_at_end") or Floor().__dict__
    print(
        f"\n{label + ': ' if label else ''}floor at the end: AMQP round trip p50 "
        f"{fmt(end['amqp_rtt_p50_ms'], 2)} ms, {fmt(end['amqp_pipelined_msgs_per_s'], 0)} "
        f"msgs/s in flight; XADD p50 {fmt(end['redis_xadd_p50_ms'], 3)} ms (drift check; "
        "ratios use the first floor)"
    )
    for name, lines in problems.items():
        if lines:
            print(f"{name}: {len(lines)} warning/error log lines, first: {lines[0][:300]}")
    print(f"exit codes: {report['exit_codes']}")
    print(f"queue depths at the end: {report.get('queue_depths_at_end')}")
    slow = report.get("redis_slowlog") or []
    print(
        f"Redis SLOWLOG entries of this namespace: {len(slow)}"
        + (f", slowest {max(e['ms'] for e in slow):.1f} ms ({slow[0]['command']})" if slow else "")
    )


async def run_scenario(
    name: str, ctx: Context, fleet: Fleet, cpu: CpuMeter, label: str = ""
) -> Outcome:
    """One scenario, printed as it ends; a failure is its outcome, not an exception."""
    print(f"\n[{name}{' on ' + label if label else ''}] {SCENARIO_BY_NAME[name].__doc__}")
    lines_before = log_line_counts(fleet)
    before = cpu.snapshot()
    began = time.perf_counter()
    try:
        result = await SCENARIO_BY_NAME[name](ctx)
    except Exception as exc:  # report it, run the others, exit non-zero
        outcome = Outcome(None, error=f"{type(exc).__name__}: {exc}")
        print(f"  FAILED: {type(exc).__name__}: {exc}")
    else:
        # The retention scenario runs processes of its own and measures
        # their CPU itself, over its paced phase.
        outcome = Outcome(
            result,
            cpu_percent_of_one_core=result.cpu_percent_of_one_core
            if isinstance(result, RetentionResult)
            else CpuMeter.percent(before, cpu.snapshot(), time.perf_counter() - began),
        )
        print(describe(outcome))
    disturbed = new_log_lines(fleet, lines_before)
    if isinstance(outcome.result, RetentionResult):
        disturbed += outcome.result.process_warnings
    outcome = dataclasses.replace(outcome, disturbed=disturbed)
    if disturbed:
        print(
            f"  !! DISTURBED: the processes logged {len(disturbed)} warning/error "
            f"lines during this scenario (a broker restart by another tenant?); "
            f"first: {disturbed[0][:200]}"
        )
    return outcome


async def bench(args: argparse.Namespace) -> int:
    if args.redis_cluster:
        return await bench_cluster(args)
    sizes = Sizes.pick(args.quick)
    layout = Layout(workers=args.workers, schedulers=args.schedulers)
    only = args.only or list(SCENARIOS)
    namespace = f"bench-{secrets.token_hex(4)}"
    settings = Settings.from_env(namespace=namespace)
    log_dir = Path(tempfile.mkdtemp(prefix=f"lf-{namespace}-"))
    report = base_report(args, sizes, layout, namespace)
    print(
        f"ledgerflow benchmark{' (--quick)' if args.quick else ''}: namespace {namespace}, "
        f"event loop {report['event_loop']}"
    )
    async with rig(
        args, sizes=sizes, layout=layout, settings=settings, log_dir=log_dir, report=report
    ) as done:
        for name in only:
            await done.run(name)
    report["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    results = await write_results(args.results or RESULTS_JSON, report)
    print("\nSUMMARY\n" + summary_table(Floor(**report["floor"]), done.outcomes))
    print(f"\nresults written to {results}")
    if not done.failed:
        shutil.rmtree(log_dir, ignore_errors=True)
    else:
        print(f"process logs kept in {log_dir}")
    return 1 if done.failed else 0


def log_dirs(root: Path, names: Sequence[str]) -> dict[str, Path]:
    """A folder under ``root`` for each pass (their process logs share names) and server."""
    made = {name: root / name for name in names}
    for folder in made.values():
        folder.mkdir()
    return made


def cluster_report(
    args: argparse.Namespace, sizes: Sizes, layout: Layout, settings: Settings
) -> dict[str, Any]:
    report = base_report(args, sizes, layout, settings.namespace)
    report["redis_url"] = settings.redis_url
    return report


async def bench_cluster(args: argparse.Namespace) -> int:
    """The scenarios on a redis-server of the benchmark's own and on a local Redis Cluster,
    compared in the same run; then the key distribution of many runs over its masters.

    Both fleets run side by side (each in its own namespace, idle while the other
    works), and each scenario runs on one right after the other, the order
    alternating from one scenario to the next: on a machine whose load changes
    from minute to minute, the two figures of a ratio are then seconds apart, not
    a whole pass. The cluster and the redis-server are stopped however this ends
    (an error, Ctrl-C, SIGTERM): ``started`` and ``own_redis`` stop them on the way out.
    """
    sizes = Sizes.pick(args.quick)
    layout = Layout(workers=args.workers, schedulers=args.schedulers)
    only = args.only or list(CLUSTER_SCENARIOS)
    token = secrets.token_hex(4)
    log_dir = Path(tempfile.mkdtemp(prefix=f"lf-bench-{token}-cluster-"))
    dirs = log_dirs(log_dir, ("single-redis", "single", "cluster"))
    report = base_report(args, sizes, layout, f"bench-{token}")
    report["mode"] = "redis-cluster"
    print(
        f"ledgerflow benchmark against a Redis Cluster{' (--quick)' if args.quick else ''}: "
        f"namespaces bench-{token}-*, event loop {args.loop}, scenarios {', '.join(only)}"
    )
    rigs: dict[str, Rig] = {}
    distribution: DistributionResult | None = None
    began = time.monotonic()
    with started(base_port=CLUSTER_BASE_PORT) as cluster:
        node_pids = [proc.pid for proc in cluster.procs.values()]
        report["redis_cluster"] = cluster_layout(cluster)
        masters = report["redis_cluster"]["masters"]
        # The replicas' CPU apart: the single server has none to feed.
        master_pids = [cluster.procs[int(port)].pid for port in masters]
        replica_pids = [pid for pid in node_pids if pid not in master_pids]
        print(
            f"Redis Cluster up in {time.monotonic() - began:.1f} s: masters "
            + ", ".join(f":{port} (slots {slots})" for port, slots in masters.items())
            + f", {len(report['redis_cluster']['replicas'])} replicas; logs in {log_dir}"
        )
        try:
            async with own_redis(dirs["single-redis"]) as own:
                if own is None:  # the cluster started, so redis-server is installed
                    raise RuntimeError("redis-server is not on PATH")
                url, pid = own
                single = Settings.from_env(redis_url=url, namespace=f"bench-{token}-single")
                clustered = Settings.from_env(
                    redis_url=cluster.url(), namespace=f"bench-{token}-cluster"
                )
                print(f"\n=== single: own redis-server at {url}, namespace {single.namespace} ===")
                async with rig(
                    args,
                    sizes=sizes,
                    layout=layout,
                    settings=single,
                    log_dir=dirs["single"],
                    report=cluster_report(args, sizes, layout, single),
                    # The other Redis's CPU is counted apart, not as "others".
                    servers={"redis": [pid], "redis cluster (idle)": node_pids},
                    label="single",
                ) as rigs["single"]:
                    print(
                        "\n=== cluster: 3 masters + 3 replicas at "
                        f"{clustered.redis_url}, namespace {clustered.namespace} ==="
                    )
                    async with rig(
                        args,
                        sizes=sizes,
                        layout=layout,
                        settings=clustered,
                        log_dir=dirs["cluster"],
                        report=cluster_report(args, sizes, layout, clustered),
                        servers={
                            "redis": master_pids,
                            "redis replicas": replica_pids,
                            "redis single (idle)": [pid],
                        },
                        label="cluster",
                    ) as rigs["cluster"]:
                        for mine, other in (("single", "cluster"), ("cluster", "single")):
                            rigs[mine].cpu.components["other fleet (idle)"] = [
                                proc.pid for proc in rigs[other].fleet.procs
                            ]
                        for i, name in enumerate(only):
                            order = ("single", "cluster") if i % 2 == 0 else ("cluster", "single")
                            for target in order:
                                await rigs[target].run(name)
        except Exception as exc:  # report it; the distribution still runs
            report["error"] = f"{type(exc).__name__}: {exc}"
            print(f"\nFAILED: {report['error']}")
        print(f"\n[distribution] {sizes.distribution_runs:,} runs' keys over the masters")
        try:
            distribution = await key_distribution(
                cluster, sizes.distribution_runs, f"bench-{token}-dist"
            )
        except Exception as exc:
            report["distribution_error"] = f"{type(exc).__name__}: {exc}"
            print(f"  FAILED: {report['distribution_error']}")
        else:
            print(describe_distribution(distribution))
    figures = {
        name: PassFigures(
            floor=Floor(**r.report["floor"]) if "floor" in r.report else None,
            idle_cpu=r.report.get("idle_cpu_percent_of_one_core", {}),
            outcomes=r.outcomes,
        )
        for name, r in rigs.items()
    }
    nothing = PassFigures(None, {}, {})
    rows = compare(figures.get("single", nothing), figures.get("cluster", nothing))
    report["passes"] = {name: r.report for name, r in rigs.items()}
    report["comparison"] = rows
    report["distribution"] = None if distribution is None else dataclasses.asdict(distribution)
    report["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    results = await write_results(args.results or RESULTS_CLUSTER_JSON, report)
    for name, side in figures.items():
        if side.floor is not None:
            print(f"\nSUMMARY ({name})\n" + summary_table(side.floor, side.outcomes))
    print(
        "\nCLUSTER vs SINGLE (same run, same processes and sizes, each scenario on one right "
        "after the other; a rate below 1 or a time above 1 is the cluster's cost)\n"
        + comparison_table(rows)
    )
    if distribution is not None:
        print("\nKEY DISTRIBUTION\n" + describe_distribution(distribution))
    print(f"\nresults written to {results}")
    failed = (
        "error" in report
        or len(rigs) < 2
        or any(r.failed for r in rigs.values())
        or not (distribution and distribution.correct)
    )
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


async def write_results(path: Path, report: dict[str, Any]) -> Path:
    """Write the JSON results; the path as printed (relative to the repository if inside)."""
    await asyncio.to_thread(path.write_text, json.dumps(report, indent=2, default=str) + "\n")
    return path.relative_to(ROOT) if path.is_relative_to(ROOT) else path


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
        "--redis-cluster",
        action="store_true",
        help="start a local 3-master Redis Cluster and run the scenarios (default: "
        f"{', '.join(CLUSTER_SCENARIOS)}) on a redis-server of the benchmark's own and on the "
        "cluster, compared in the same run; then count many runs' keys per master",
    )
    parser.add_argument(
        "--results",
        type=Path,
        default=None,
        metavar="PATH",
        help=f"where the JSON results go (default {RESULTS_JSON.relative_to(ROOT)}, or "
        f"{RESULTS_CLUSTER_JSON.relative_to(ROOT)} with --redis-cluster)",
    )
    parser.add_argument(
        "--loop",
        choices=("asyncio", "uvloop"),
        default="uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
        help="event loop of the processes and of the benchmark itself, floor included "
        "(default: uvloop when installed, as the CLI does)",
    )
    args = parser.parse_args(argv)
    if args.redis_cluster:
        own = sorted(set(args.only or ()) & set(OWN_REDIS_SCENARIOS))
        if own:
            parser.error(
                f"--redis-cluster: {', '.join(own)} run on a redis-server of their own, "
                "never on the cluster; leave them out"
            )
    return args


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
    except ClusterUnavailable as exc:
        print(f"--redis-cluster: no local Redis Cluster here: {exc}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("interrupted; the namespace was cleaned up", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
