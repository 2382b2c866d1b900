"""History limits on real servers: continue_as_new chains, the warning, the cap (issue 13)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from ledgerflow.eventlog.events import EventType
from ledgerflow.eventlog.records import HookCreated, RunCompleted, RunCreated
from ledgerflow.scheduler.client import Client
from ledgerflow.scheduler.embedded import serving
from ledgerflow.scheduler.historylimits import HistoryLimits
from ledgerflow.scheduler.reconciler import Reconciler
from ledgerflow.scheduler.service import Scheduler
from structlog.testing import capture_logs

import ledgerflow as lf
from ledgerflow.ops import faults
from ledgerflow.ops.lease import Lease
from ledgerflow.ops.metrics import sample
from tests.apps import chains
from tests.processes import cli
from tests.servers import Servers

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def no_faults_left() -> Any:
    faults.disarm_all()
    yield
    faults.disarm_all()


@contextlib.asynccontextmanager
async def fleet(backends: Any, limits: HistoryLimits) -> AsyncIterator[Client]:
    async with serving(
        backends.store, backends.broker, concurrency=8, scheduler={"history": limits}
    ) as client:
        yield client


async def chain_of(client: Client, run_id: str) -> list[str]:
    """The run ids of a chain, first to last, followed through ``continued_as``."""
    ids = [run_id]
    while True:
        events = await client.events(ids[-1])
        end = events[-1].record
        if not isinstance(end, RunCompleted) or end.continued_as is None:
            return ids
        ids.append(end.continued_as)


async def resume(client: Client, token: str, payload: Any) -> None:
    """Resume a hook that a chain creates again in each run (absent for a moment between)."""
    for _ in range(200):
        try:
            await client.resume_hook(token, payload)
            return
        except lf.HookNotFoundError:
            await asyncio.sleep(0.02)
    raise AssertionError(f"no live hook {token!r}")


async def test_a_poller_continues_as_new_and_the_first_handle_gets_the_final_result(
    running: Client,
) -> None:
    run = await running.start(chains.poller, 10, 3, run_id="poll-1")
    assert await run.result(timeout=30) == 10
    ids = await chain_of(running, "poll-1")
    assert ids == ["poll-1", "poll-1:c1", "poll-1:c2", "poll-1:c3"]
    for before, after in itertools.pairwise(ids):
        old, new = await running.events(before), await running.events(after)
        created = new[0].record
        assert isinstance(created, RunCreated) and created.continued_from == before
        assert created.workflow == "ch_poller"
        # Fresh history: each link holds only its own polls.
        assert sum(e.type is EventType.STEP_CREATED for e in new) <= 3
        assert old[-1].type is EventType.RUN_COMPLETED
        assert (await running.state(before)).continued_as == after
    last = await running.state(ids[-1])
    assert (last.result, last.continued_as, last.continued_from) == (10, None, ids[-2])
    # Any run of the chain waits for the same end.
    assert await running.get_handle("poll-1:c2").result(timeout=5) == 10


async def test_every_link_of_a_chain_keeps_its_workflows_retention(running: Client) -> None:
    run = await running.start(chains.kept_poller, 4, 2, run_id="kept-1")
    assert await run.result(timeout=30) == 4
    ids = await chain_of(running, "kept-1")
    assert ids == ["kept-1", "kept-1:c1"]
    for run_id in ids:
        created = (await running.events(run_id))[0].record
        assert isinstance(created, RunCreated) and created.retention_ms == 3_600_000
        assert (await running.store.status(run_id))["ret"] == "3600000"


async def test_a_hook_loop_with_a_fixed_token_continues_without_conflicts(
    running: Client,
) -> None:
    run = await running.start(chains.inbox, "inbox-tok", 2)
    for payload in range(5):
        await resume(running, "inbox-tok", payload)
    await resume(running, "inbox-tok", "stop")
    assert await run.result(timeout=30) == [0, 1, 2, 3, 4]
    ids = await chain_of(running, run.run_id)
    assert len(ids) == 3
    for run_id in ids:
        events = await running.events(run_id)
        created = [e.record for e in events if isinstance(e.record, HookCreated)]
        assert created and all(h.conflict is None for h in created)
    # Payloads that reached an old run's hook after its code took its share were
    # carried to the successor, not lost.
    carried = [(await running.events(i))[0].record for i in ids[1:]]
    assert all(isinstance(c, RunCreated) for c in carried)


async def test_except_exception_in_workflow_code_does_not_swallow_a_continuation(
    running: Client,
) -> None:
    run = await running.start(chains.swallower, 0)
    assert await run.result(timeout=30) == "ended at 2"


async def test_a_parent_awaiting_a_continuing_child_gets_the_chains_end(running: Client) -> None:
    run = await running.start(chains.parent, 5, 2)
    assert await run.result(timeout=30) == "child polled 5"
    events = await running.events(run.run_id)
    (completed,) = [e for e in events if e.type is EventType.STEP_COMPLETED]
    assert completed.data["result"] == 5


async def test_cancelling_a_continued_run_cancels_where_its_chain_runs_now(
    running: Client,
) -> None:
    run = await running.start(chains.inbox, "cancel-tok", 1)
    await resume(running, "cancel-tok", "a")
    await resume(running, "cancel-tok", "b")  # received by the successor
    await running.cancel(run.run_id, "enough")
    with pytest.raises(lf.RunCancelled):
        await run.result(timeout=30)


async def test_runs_show_and_list_show_the_link(
    running: Client, servers: Servers, names: Any
) -> None:
    run = await running.start(chains.poller, 4, 2, run_id="shown")
    assert await run.result(timeout=30) == 4
    shown = cli(servers, names.namespace, "runs", "show", "shown")
    assert shown.returncode == 0, shown.stderr
    assert "continued as: shown:c1" in shown.stdout
    successor = cli(servers, names.namespace, "runs", "show", "shown:c1")
    assert "continued from: shown" in successor.stdout
    assert "result: 4" in successor.stdout
    listed = cli(servers, names.namespace, "runs", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    links = {r["run_id"]: r["continued_as"] for r in json.loads(listed.stdout)}
    assert links == {"shown": "shown:c1", "shown:c1": None}
    table = cli(servers, names.namespace, "runs", "list")
    assert "CONTINUED AS" in table.stdout and "shown:c1" in table.stdout


async def test_the_warning_fires_once_per_run_with_a_log_line_and_a_metric(
    backends: Any,
) -> None:
    labels = {"workflow": "ch_poller"}
    before = sample("ledgerflow_history_warnings_total", labels)
    async with fleet(backends, HistoryLimits(warn=8, limit=1000)) as client:
        with capture_logs() as logs:
            run = await client.start(chains.poller, 12, 100)
            assert await run.result(timeout=30) == 12
    warnings = [line for line in logs if "run history is long" in line["event"]]
    assert len(warnings) == 1
    assert warnings[0]["run_id"] == run.run_id and warnings[0]["events"] > 8
    assert sample("ledgerflow_history_warnings_total", labels) == before + 1


async def test_the_cap_fails_a_run_with_the_reason_instead_of_reading_on(
    backends: Any,
) -> None:
    labels = {"workflow": "ch_endless"}
    before = sample("ledgerflow_history_limit_failures_total", labels)
    async with fleet(backends, HistoryLimits(warn=5, limit=20)) as client:
        run = await client.start(chains.endless, "endless-tok")
        with pytest.raises(lf.WorkflowFailedError) as failed:
            for i in range(100):
                with contextlib.suppress(lf.HookNotFoundError):
                    await client.resume_hook("endless-tok", i)
                with contextlib.suppress(lf.ResultTimeoutError):
                    await run.result(timeout=0.05)
        assert failed.value.type_name == "ledgerflow.HistoryLimitError"
        assert "history limit of 20" in failed.value.message
        events = await client.events(run.run_id)
        assert events[-1].data["recorded_by"] == "scheduler"
        assert len(events) <= 25
        # Its hook was disposed with the end: the token is free again.
        assert await backends.store.hook_owner("endless-tok") is None
    assert sample("ledgerflow_history_limit_failures_total", labels) == before + 1


async def test_a_crash_between_the_successor_and_the_old_end_is_recovered(
    running: Client, backends: Any
) -> None:
    faults.arm(faults.SCHEDULER_AFTER_CONTINUATION_STARTED)
    lease = Lease(backends.store.client, backends.names, owner="rec", ttl_ms=2000)
    reconciler = Reconciler(backends.store, backends.broker, lease, stale_after=0.5, interval=0.2)
    task = asyncio.create_task(reconciler.run())
    try:
        run = await running.start(chains.poller, 4, 2, run_id="crashy")
        assert await run.result(timeout=30) == 4
    finally:
        reconciler.stop()
        await asyncio.wait_for(task, 10)
    assert faults.fired[faults.SCHEDULER_AFTER_CONTINUATION_STARTED] == 1
    assert reconciler.recoveries["outcome not acted on"] >= 1, reconciler.recoveries
    assert await chain_of(running, "crashy") == ["crashy", "crashy:c1"]
    successor = await running.events("crashy:c1")
    assert sum(e.type is EventType.RUN_CREATED for e in successor) == 1


async def test_payloads_an_old_run_never_took_are_carried_to_its_successor(
    backends: Any,
) -> None:
    """Two payloads reach the hook before the scheduler replays: the code takes one."""
    client = Client(backends.store, backends.broker)
    first = Scheduler(backends.store, backends.broker)
    await first.start()
    try:
        run = await client.start(chains.inbox, "carry-tok", 1)
        for _ in range(200):
            if await backends.store.hook_owner("carry-tok") is not None:
                break
            await asyncio.sleep(0.02)
    finally:
        await first.stop()
    await client.resume_hook("carry-tok", "a")
    await client.resume_hook("carry-tok", "b")  # on the same old hook: nobody replays now
    second = Scheduler(backends.store, backends.broker)
    await second.start()
    try:
        successor: list[Any] = []
        for _ in range(200):
            successor = await client.events(f"{run.run_id}:c1")
            if successor:
                break
            await asyncio.sleep(0.02)
        assert successor
        created = successor[0].record
        assert isinstance(created, RunCreated) and created.carried == {"carry-tok": ["b"]}
        await resume(client, "carry-tok", "stop")
        assert await run.result(timeout=30) == ["a", "b"]
    finally:
        await second.stop()
    old = await client.events(run.run_id)
    disposed = [e for e in old if e.type is EventType.HOOK_DISPOSED]
    assert [e.data.get("reason") for e in disposed] == ["continued as new"]
