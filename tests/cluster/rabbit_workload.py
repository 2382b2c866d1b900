"""The fleet and the mixed workload the cluster tests run, and what every run must show.

No reconciler runs: it re-publishes what the log says is missing, so it would hide
a message the failover lost. Every run completing without it is the proof.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ledgerflow.eventlog.errors import HookNotFoundError
from ledgerflow.eventlog.events import EventType
from ledgerflow.eventlog.names import Names
from ledgerflow.eventlog.records import RunCompleted

import ledgerflow as lf
from ledgerflow.testing.fleet import Fleet, cli_env
from tests.apps import arith, chains, flaky, waiting
from tests.processes import ROOT
from tests.servers import Servers

APP = "tests.apps.clustered"
WORKERS = 2
SCHEDULERS = 1


def start_fleet(servers: Servers, names: Names, log_dir: Path) -> Fleet:
    env = cli_env(servers.amqp_url, servers.redis_url, names.namespace, pythonpath=ROOT)
    fleet = Fleet(env, log_dir, cwd=ROOT)
    for _ in range(WORKERS):
        fleet.add("worker", ["worker", APP, "--concurrency", "8"])
    for _ in range(SCHEDULERS):
        fleet.add("scheduler", ["scheduler", APP])
    fleet.start_all()
    return fleet


async def wait_ready(fleet: Fleet, servers: Servers, names: Names) -> None:
    await fleet.wait_until_consuming(
        servers.amqp_url, {names.step_queue(): WORKERS, names.runs_queue: SCHEDULERS}
    )


@dataclass
class Started:
    handle: lf.RunHandle
    expected: Any
    shape: str


@dataclass
class Workload:
    """Runs of every shape; ``scale`` multiplies the step-heavy ones."""

    client: lf.Client
    names: Names
    scale: int = 1
    chain_length: int = 4

    async def start(self, tag: str) -> tuple[list[Started], list[str]]:
        """Start one batch; returns the runs and the hook tokens to resume later."""
        c, ns = self.client, self.names.namespace
        runs: list[Started] = []
        for _ in range(3 * self.scale):
            handle = await c.start(arith.fan_chain, 6, 3)
            runs.append(Started(handle, arith.expected_fan_chain(6, 3), "fan-out"))
        for _ in range(2 * self.scale):
            handle = await c.start(arith.long_chain, self.chain_length)
            runs.append(Started(handle, sum(range(self.chain_length)), "chain"))
        handle = await c.start(chains.poller, 6, 2)
        runs.append(Started(handle, 6, "continue-as-new"))
        handle = await c.start(waiting.sleep_then_step, 0.5)
        runs.append(Started(handle, "marked after sleep", "sleep"))
        handle = await c.start(flaky.one, "fails_twice", f"{ns}:test:{tag}:flaky")
        runs.append(Started(handle, "ok on attempt 3", "retries"))
        tokens = []
        for i in range(2):
            order = f"{tag}-{i}"
            handle = await c.start(waiting.approval, order)
            runs.append(Started(handle, {"approved": order}, "hook"))
            tokens.append(f"approve-{order}")
        return runs, tokens

    async def resume(self, tokens: list[str], timeout: float = 60.0) -> None:
        """Resume each hook once its run has created it."""
        deadline = asyncio.get_running_loop().time() + timeout
        for token in tokens:
            while True:
                try:
                    await self.client.resume_hook(token, {"approved": token.split("-", 1)[1]})
                    break
                except HookNotFoundError:
                    if asyncio.get_running_loop().time() > deadline:
                        raise
                    await asyncio.sleep(0.1)


async def results(runs: list[Started], timeout: float) -> None:
    got = await asyncio.wait_for(
        asyncio.gather(*(run.handle.result(timeout=timeout) for run in runs)), timeout + 5
    )
    wrong = [
        (run.shape, run.handle.run_id, result, run.expected)
        for run, result in zip(runs, got, strict=True)
        if result != run.expected
    ]
    assert not wrong, wrong


async def chain_of(client: lf.Client, run_id: str) -> list[str]:
    """The run ids of a chain, first to last, followed through ``continued_as``."""
    ids = [run_id]
    while True:
        end = (await client.events(ids[-1]))[-1].record
        if not isinstance(end, RunCompleted) or end.continued_as is None:
            return ids
        ids.append(end.continued_as)


async def recorded_once(client: lf.Client, runs: list[Started]) -> Counter[str]:
    """Every step created and completed once, every run completed once; attempts by shape.

    A step may have started more than once (a delivery redelivered when its node
    died: at least once), but its outcome is recorded once.
    """
    restarts: Counter[str] = Counter()
    for run in runs:
        for run_id in await chain_of(client, run.handle.run_id):
            events = await client.events(run_id)
            for kind in (EventType.STEP_CREATED, EventType.STEP_COMPLETED):
                counts = Counter(e.corr for e in events if e.type is kind)
                assert not counts or max(counts.values()) == 1, (run.shape, run_id, kind, counts)
            created = {e.corr for e in events if e.type is EventType.STEP_CREATED}
            completed = {e.corr for e in events if e.type is EventType.STEP_COMPLETED}
            retried = {e.corr for e in events if e.type is EventType.STEP_RETRYING}
            assert completed == created, (run.shape, run_id, created - completed)
            assert sum(e.type is EventType.RUN_COMPLETED for e in events) == 1, run_id
            starts = Counter(e.corr for e in events if e.type is EventType.STEP_STARTED)
            for corr, n in starts.items():
                expected = 1 + sum(
                    1 for e in events if e.type is EventType.STEP_RETRYING and e.corr == corr
                )
                if n > expected:
                    restarts[run.shape] += n - expected
            if run.shape == "retries":
                assert retried, run_id
    return restarts
