"""Whole runs on a Redis Cluster: worker, scheduler and reconciler processes with a cluster URL.

Fan-out, chain, sleep, retry and hook runs complete with the right results and
clean logs (``ops.checker.check_log``: no second terminal for any step, wait or
run, nothing after the end). Then the same with a master killed (SIGKILL) while
the runs are in flight: its replica takes over within seconds, every process
rides the failover out (their Redis calls fail, back off and retry; the stream
watchers reconnect to the promoted replica), and every run still completes with
nothing recorded twice. The killed node is restarted afterwards, so later tests
have a whole cluster.
"""

from __future__ import annotations

import asyncio
import random
import shutil
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio
import redis
from ledgerflow.eventlog.events import EventType
from ledgerflow.eventlog.names import Names
from ledgerflow.eventlog.settings import Settings
from ledgerflow.worker.backend import connect

import ledgerflow as lf
from ledgerflow.ops.checker import check_log
from ledgerflow.testing.fleet import Fleet, cli_env
from ledgerflow.testing.namespace import delete_namespace
from tests.cluster import redis_apps
from tests.cluster.redis_cluster import RedisClusterNodes, keyslot
from tests.processes import ROOT
from tests.servers import Servers

# One fleet for the module (starting six processes takes most of its time); the
# tests share its namespace, each with runs of its own.
pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

APP = "tests.cluster.redis_apps"
RESULT_TIMEOUT = 180.0
CHAIN_STEPS = 200
"""Long enough that the chains are still appending when the master dies, however long
the replica takes to catch up before it is stalled (120 was not, on a loaded machine)."""
STALL_S = 8
FILLER_BYTES = 64 << 20
"""More than loopback's socket buffers hold: what the replica has not read stays unsent."""


@dataclass
class ClusterRig:
    """A fleet on the cluster, and a client on it in this process."""

    cluster: RedisClusterNodes
    names: Names
    client: lf.Client
    fleet: Fleet


@pytest.fixture(scope="module")
def cluster_namespace(redis_cluster: RedisClusterNodes) -> str:
    redis_cluster.wait_healthy()
    return f"c{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="module")
def fleet_logs(cluster_namespace: str) -> Iterator[Path]:
    folder = Path(tempfile.mkdtemp(prefix=f"lf-{cluster_namespace}-"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def rig(
    servers: Servers, redis_cluster: RedisClusterNodes, cluster_namespace: str, fleet_logs: Path
) -> AsyncIterator[ClusterRig]:
    url = redis_cluster.url()
    env = cli_env(servers.amqp_url, url, cluster_namespace, pythonpath=ROOT)
    fleet = Fleet(env, fleet_logs, cwd=ROOT)
    worker = ["worker", APP, "--concurrency", "8", "--grace", "5"]
    for _ in range(3):
        fleet.add("worker", worker)
    for _ in range(2):
        fleet.add("scheduler", ["scheduler", APP])
    fleet.add("reconciler", ["reconciler", "--stale-after", "2", "--interval", "1"])
    settings = Settings(servers.amqp_url, url, cluster_namespace)
    try:
        async with connect(settings) as backends:
            fleet.start_all()
            try:
                await fleet.wait_until_consuming(
                    servers.amqp_url, {backends.names.step_queue(): 3, backends.names.runs_queue: 2}
                )
                client = lf.Client(backends.store, backends.broker)
                yield ClusterRig(redis_cluster, backends.names, client, fleet)
            finally:
                fleet.stop_all()
    finally:
        await delete_namespace(servers.amqp_url, url, cluster_namespace, best_effort=True)


def plans(count: int, seed: int) -> list[redis_apps.Plan]:
    rng = random.Random(seed)
    shapes = {
        "fanout": lambda: (rng.randint(3, 8), rng.randint(0, 99)),
        "chain": lambda: (rng.randint(8, 20), rng.randint(0, 99)),
        "sleep": lambda: (round(rng.uniform(0.5, 2.0), 2), rng.randint(0, 99)),
        "retry": lambda: (rng.randint(0, 99),),
    }
    found = []
    for i in range(count):
        shape = list(shapes)[i % len(shapes)]
        args = shapes[shape]()
        found.append(redis_apps.Plan(shape, args, redis_apps.expected(shape, args)))
    return found


async def start_all(rig: ClusterRig, plans: list[redis_apps.Plan]) -> list[lf.RunHandle]:
    return [await rig.client.start(p.workflow, *p.args) for p in plans]


async def start_hooks(rig: ClusterRig, count: int) -> list[tuple[lf.RunHandle, str]]:
    orders = [f"o{uuid.uuid4().hex[:8]}" for _ in range(count)]
    runs = [await rig.client.start(redis_apps.approval, order) for order in orders]
    return list(zip(runs, orders, strict=True))


async def resume_hooks(rig: ClusterRig, hooks: list[tuple[lf.RunHandle, str]]) -> None:
    """Resume each hook once its run has created it (a hook not live yet is waited for)."""
    for _, order in hooks:
        deadline = time.monotonic() + 60
        while True:
            try:
                await rig.client.resume_hook(f"approve-{order}", {"ok": order})
                break
            except lf.HookNotFoundError:
                assert time.monotonic() < deadline, f"hook approve-{order} never appeared"
                await asyncio.sleep(0.2)


async def check_runs(
    rig: ClusterRig,
    runs: list[lf.RunHandle],
    plans: list[redis_apps.Plan],
    hooks: list[tuple[lf.RunHandle, str]],
) -> Counter[str]:
    """Every result right and every log clean; how many of each event type were written."""
    results = await asyncio.wait_for(
        asyncio.gather(*(run.result(timeout=RESULT_TIMEOUT) for run in runs)), RESULT_TIMEOUT + 10
    )
    assert results == [p.expected for p in plans]
    for run, order in hooks:
        assert await run.result(timeout=RESULT_TIMEOUT) == {"ok": order}
    written: Counter[str] = Counter()
    for run in [*runs, *(h for h, _ in hooks)]:
        events = await rig.client.events(run.run_id)
        assert check_log(events, run.run_id) == [], run.run_id
        completed = Counter(e.corr for e in events if e.type is EventType.STEP_COMPLETED)
        assert not completed or max(completed.values()) == 1, f"{run.run_id}: recorded twice"
        written.update(e.type.value for e in events)
    return written


def _exists_on(port: int, key: str) -> int:
    node = redis.Redis(host="127.0.0.1", port=port)
    try:
        return int(node.exists(key))
    finally:
        node.close()


def masters_used(rig: ClusterRig, runs: list[lf.RunHandle]) -> Counter[int]:
    return Counter(rig.cluster.master_of_slot(keyslot(rig.names.stream(r.run_id))) for r in runs)


async def test_runs_of_every_shape_complete_on_the_cluster(rig: ClusterRig) -> None:
    chosen = plans(24, seed=1)
    runs = await start_all(rig, chosen)
    hooks = await start_hooks(rig, 4)
    assert len(masters_used(rig, runs)) == 3  # every master holds some of them
    await resume_hooks(rig, hooks)
    written = await check_runs(rig, runs, chosen, hooks)
    assert written["run_completed"] == len(runs) + len(hooks)
    assert written["step_retrying"] >= 6  # the retry shape fails its first attempt


async def test_a_master_killed_mid_run_fails_over_and_every_run_completes_once(
    rig: ClusterRig,
) -> None:
    chosen = plans(40, seed=2)
    runs = await start_all(rig, chosen)
    hooks = await start_hooks(rig, 4)
    await asyncio.sleep(1.0)  # runs in flight: steps queued, sleeps armed, hooks waiting
    victim = masters_used(rig, runs).most_common(1)[0][0]
    replica = rig.cluster.kill_master(victim)
    killed = time.monotonic()
    try:
        took = await asyncio.to_thread(rig.cluster.wait_promoted, replica)
        await resume_hooks(rig, hooks)
        written = await check_runs(rig, runs, chosen, hooks)
        print(
            f"\nfailover of :{victim} to :{replica} in {took:.1f} s; all {len(runs) + len(hooks)}"
            f" runs done {time.monotonic() - killed:.1f} s after the kill; "
            f"events {dict(sorted(written.items()))}"
        )
    finally:
        rig.cluster.restart(victim)
        await asyncio.to_thread(rig.cluster.wait_healthy)
    crashed = [p.name for p in rig.fleet.procs if p.returncode is not None]
    assert not crashed, {p.name: p.tail(5) for p in rig.fleet.procs if p.name in crashed}


async def test_a_master_lost_with_its_replica_behind_loses_entries_and_every_run_completes(
    rig: ClusterRig,
) -> None:
    """The failover the default durability does not cover: acknowledged entries are lost.

    The victim's replica is stalled (DEBUG SLEEP) and the replication stream in front
    of it filled past the kernel's socket buffers (on loopback those would otherwise
    carry everything to the replica once it wakes, and nothing would be lost), so the
    master's last appends never reach it; then the master is killed and the stale
    replica promoted. The logs of the victim's runs go back in time. Schedulers must
    not build on what they saw before (cached instances, decisions in flight:
    ``based_on``), and the reconciler must re-send what the lost entries had started,
    so every run still completes, with nothing recorded twice.
    """
    # Chains long enough to be appending all through the window, on every master.
    chosen = [
        redis_apps.Plan("chain", (CHAIN_STEPS, i), redis_apps.expected("chain", (CHAIN_STEPS, i)))
        for i in range(30)
    ]
    runs = await start_all(rig, chosen)
    victim = masters_used(rig, runs).most_common(1)[0][0]
    replica = rig.cluster.replica_of(victim)
    before = {r.run_id: len(await rig.client.events(r.run_id)) for r in runs}
    # What was written before now (every run's start) reaches the replica; only what
    # follows is at risk. Without this a run started a moment ago could vanish whole.
    await asyncio.to_thread(rig.cluster.wait_caught_up, victim, replica)
    # Asleep well past the kill, even on a loaded machine (writing the filler and reading
    # every run's log take seconds there): a replica that woke before it would catch up.
    sleeper = await asyncio.to_thread(rig.cluster.stall, replica, STALL_S)  # once asleep
    on_victim = next(r.run_id for r in runs if masters_used(rig, [r]) == Counter({victim: 1}))
    tag = rig.names.stream(on_victim).split("}")[0].split("{")[1]
    filler = f"{rig.names.namespace}:lag-filler:{{{tag}}}"
    master = redis.Redis(host="127.0.0.1", port=victim)
    try:
        await asyncio.to_thread(master.set, filler, b"x" * FILLER_BYTES)
    finally:
        master.close()
    await asyncio.sleep(1.5)  # the master takes appends its replica never sees
    seen = {r.run_id: len(await rig.client.events(r.run_id)) for r in runs}
    rig.cluster.kill(victim)
    killed = time.monotonic()
    try:
        took = await asyncio.to_thread(rig.cluster.wait_promoted, replica)
        sleeper.wait(10)
        after = {r.run_id: len(await rig.client.events(r.run_id)) for r in runs}
        lost = {r: seen[r] - after[r] for r in seen if after[r] < seen[r]}
        try:
            written = await check_runs(rig, runs, chosen, [])
        except lf.ResultTimeoutError:
            for r in runs:
                events = await rig.client.events(r.run_id)
                if not any(e.type is EventType.RUN_COMPLETED for e in events):
                    print("UNFINISHED", r.run_id, lost.get(r.run_id), len(events))
                    for e in events[-6:]:
                        print("   ", e.id, e.type.value, e.corr, e.attempt, e.data)
            for p in rig.fleet.procs:
                print("PROC", p.name, p.tail(30))
            raise
        print(
            f"\nfailover of :{victim} to its stalled replica :{replica} in {took:.1f} s; "
            f"{len(lost)} runs lost {sum(lost.values())} entries; all {len(runs)} runs done "
            f"{time.monotonic() - killed:.1f} s after the kill; "
            f"events {dict(sorted(written.items()))}"
        )
        assert lost, "the stalled replica missed nothing: the test did not test a loss"
        assert all(after[r] >= before[r] for r in lost)
        assert not await asyncio.to_thread(_exists_on, replica, filler)
    finally:
        rig.cluster.restart(victim)
        await asyncio.to_thread(rig.cluster.wait_healthy)
    crashed = [p.name for p in rig.fleet.procs if p.returncode is not None]
    assert not crashed, {p.name: p.tail(5) for p in rig.fleet.procs if p.name in crashed}
