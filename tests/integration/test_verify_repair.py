"""`ledgerflow runs verify / repair`: derived state checked against, rebuilt from, the log."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis.asyncio as aioredis
from ledgerflow.eventlog.derived import repair_run, verify_run
from ledgerflow.eventlog.events import EventType

import ledgerflow as lf
from tests.apps import arith, waiting
from tests.integration.test_worker_failures import wait_for_events
from tests.processes import cli
from tests.servers import Servers

pytestmark = pytest.mark.integration


async def test_a_healthy_run_verifies_clean(running: lf.Client, backends: Any) -> None:
    run = await running.start(arith.total, 3)
    await run.result(timeout=30)
    assert await verify_run(backends.store, run.run_id) == []


async def test_every_kind_of_drift_is_reported_and_repaired(
    running: lf.Client, backends: Any, redis_client: aioredis.Redis, namespace: str
) -> None:
    names = backends.names
    token = f"{namespace}-drift"
    sleeping = await running.start(waiting.sleep_then_step, 30.0)
    hooked = await running.start(waiting.approval_with_timeout, token, 60.0)
    for run in (sleeping, hooked):
        await wait_for_events(
            running, run.run_id, lambda ev: any(e.type is EventType.WAIT_CREATED for e in ev)
        )
    await asyncio.sleep(0.2)
    assert await verify_run(backends.store, sleeping.run_id) == []
    # Corrupt every derived structure.
    await redis_client.hset(names.status(sleeping.run_id), "run", "completed")
    await redis_client.hdel(names.status(sleeping.run_id), "c:s1")
    await redis_client.zrem(names.active_for(sleeping.run_id), sleeping.run_id)
    await redis_client.zrem(names.runs_for(sleeping.run_id), sleeping.run_id)
    await redis_client.delete(names.timer_for(sleeping.run_id))
    await redis_client.hdel(names.hook_tokens_for(token), token)
    problems = await verify_run(backends.store, sleeping.run_id)
    text = "\n".join(problems)
    assert "status field 'run': stream says 'started', hash has 'completed'" in text
    assert "status field 'c:s1': stream says 'wait.created', hash has None" in text
    assert "missing from the active-runs index" in text
    assert "missing from the runs index" in text
    assert "timer entry missing: wait|" in text
    assert any("hook token" in p for p in await verify_run(backends.store, hooked.run_id))

    assert await repair_run(backends.store, sleeping.run_id) == problems
    assert await repair_run(backends.store, hooked.run_id) != []
    assert await verify_run(backends.store, sleeping.run_id) == []
    assert await verify_run(backends.store, hooked.run_id) == []
    # The repaired runs carry on normally.
    await running.resume_hook(token, "yes")
    assert await hooked.result(timeout=30) == "approved: yes"
    await running.cancel(sleeping.run_id)


async def test_verify_and_repair_from_the_cli(
    servers: Servers, running: lf.Client, backends: Any, redis_client: aioredis.Redis
) -> None:
    run = await running.start(waiting.sleep_then_step, 30.0)
    await wait_for_events(
        running, run.run_id, lambda ev: any(e.type is EventType.WAIT_CREATED for e in ev)
    )
    ns = backends.names.namespace
    clean = await asyncio.to_thread(cli, servers, ns, "runs", "verify", "--all")
    assert clean.returncode == 0, clean.stdout + clean.stderr
    await redis_client.hset(backends.names.status(run.run_id), "n", "999")
    bad = await asyncio.to_thread(cli, servers, ns, "runs", "verify", run.run_id)
    assert bad.returncode == 1
    assert "INCONSISTENT" in bad.stdout and "'n'" in bad.stdout
    fixed = await asyncio.to_thread(cli, servers, ns, "runs", "repair", "--all")
    assert fixed.returncode == 0, fixed.stderr
    assert "repaired" in fixed.stdout
    again = await asyncio.to_thread(cli, servers, ns, "runs", "verify", run.run_id, "--json")
    assert again.returncode == 0
    assert '"problems": {' in again.stdout
    await running.cancel(run.run_id)
