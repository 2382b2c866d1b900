"""The benchmark's processes: workers (each also a scheduler) as real CLI processes.

Starting, readiness, stopping and logs are ``ledgerflow.testing.fleet``'s, shared
with the tests and the chaos driver; this is only the benchmark's layout.
"""

from __future__ import annotations

from pathlib import Path

from ledgerflow.eventlog.names import Names
from ledgerflow.eventlog.settings import Settings
from ledgerflow.scheduler.historylimits import LIMIT_ENV, WARN_ENV

from bench.config import APP, HISTORY_LIMIT, HISTORY_WARN, READY_TIMEOUT, ROOT, STOP_TIMEOUT, Layout
from ledgerflow.testing.fleet import Fleet, cli_env
from ledgerflow.testing.namespace import delete_namespace


def make_fleet(
    settings: Settings,
    log_dir: Path,
    *,
    loop: str,
    layout: Layout,
    reconciler: bool = False,
    reconciler_log_level: str | None = None,
) -> Fleet:
    """Workers and schedulers (not started yet), and a reconciler if asked; logs to files,
    never to a pipe.

    The processes append with ``settings.redis_durability``, whatever the shell exports.
    ``reconciler_log_level`` (e.g. ``info``) makes the reconciler log each recovery, for a
    scenario that counts them; every other process logs warnings only.
    """
    env = cli_env(settings.amqp_url, settings.redis_url, settings.namespace, pythonpath=ROOT)
    # The long and soak scenarios measure long histories on purpose (600,000 events):
    # past the defaults, the history warning would mark them disturbed, the limit fail them.
    env[WARN_ENV], env[LIMIT_ENV] = str(HISTORY_WARN), str(HISTORY_LIMIT)
    env["LEDGERFLOW_REDIS_DURABILITY"] = settings.redis_durability
    fleet = Fleet(env, log_dir, cwd=ROOT, options=["--loop", loop], stop_timeout=STOP_TIMEOUT)
    for i in range(layout.workers):
        fleet.add(
            "worker",
            ["worker", APP, "--concurrency", str(layout.concurrency), "--grace", "5"]
            + (["--with-scheduler"] if layout.schedulers == 0 else []),
            name=f"worker-{i + 1}",
        )
    for i in range(layout.schedulers):
        fleet.add("scheduler", ["scheduler", APP], name=f"scheduler-{i + 1}")
    if reconciler:
        # As deployed: its own process, default interval; its janitor applies retention.
        level = {"LEDGERFLOW_LOG_LEVEL": reconciler_log_level} if reconciler_log_level else None
        fleet.add("reconciler", ["reconciler"], name="reconciler", env=level)
    return fleet


async def wait_until_consuming(
    fleet: Fleet, settings: Settings, names: Names, layout: Layout
) -> float:
    """Block until RabbitMQ shows every worker and scheduler consuming; returns seconds."""
    wanted = {names.step_queue(): layout.workers, names.runs_queue: layout.consumers_of_runs}
    return await fleet.wait_until_consuming(settings.amqp_url, wanted, READY_TIMEOUT)


def stop(fleet: Fleet) -> None:
    """SIGTERM all, then SIGKILL whatever has not exited after STOP_TIMEOUT."""
    for stopped in fleet.stop_all():
        if stopped.killed:
            print(f"  {stopped.name} ignored SIGTERM for {STOP_TIMEOUT:g} s: SIGKILL")


async def stop_and_delete(fleet: Fleet, settings: Settings) -> None:
    """Stop a scenario's own fleet, then delete its namespace (saying what could not be)."""
    stop(fleet)
    deleted = await delete_namespace(
        settings.amqp_url, settings.redis_url, settings.namespace, [], best_effort=True
    )
    for error in deleted.errors:
        print(f"  cleanup of {settings.namespace}: {error}")


def log_line_counts(fleet: Fleet) -> dict[str, int]:
    return {name: len(lines) for name, lines in fleet.log_lines().items()}


def new_log_lines(fleet: Fleet, before: dict[str, int]) -> list[str]:
    """Lines logged since ``before``: any means the scenario ran through trouble."""
    out = []
    for name, lines in fleet.log_lines().items():
        out += [f"{name}: {line}" for line in lines[before.get(name, 0) :]]
    return out
