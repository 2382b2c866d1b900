"""Priorities on real servers: a backlog is overtaken by higher-priority runs and steps.

One worker process with one slot works through 60 normal runs; once the backlog has
formed, 4 runs started with ``priority=3`` and 4 runs of a step declared
``priority=3`` are dispatched ahead of it: each finishes among the next few steps,
not after the backlog (their lanes' deliveries take the worker's free slot first).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

import ledgerflow as lf
from ledgerflow.testing.fleet import Fleet, cli_env
from tests.apps import priorities as pr
from tests.processes import ROOT
from tests.servers import Servers

pytestmark = pytest.mark.integration


async def finished(redis_client: aioredis.Redis, namespace: str) -> list[str]:
    return [t.decode() for t in await redis_client.lrange(pr.order_key(namespace), 0, -1)]


async def test_higher_priorities_overtake_a_backlog(
    servers: Servers, backends: Any, redis_client: aioredis.Redis, tmp_path: Path
) -> None:
    names = backends.names
    env = cli_env(servers.amqp_url, servers.redis_url, names.namespace, pythonpath=ROOT)
    fleet = Fleet(env, tmp_path, cwd=ROOT, stop_timeout=20.0)
    fleet.add("worker", ["worker", "tests.apps.priorities", "--concurrency", "1"])
    fleet.add("scheduler", ["scheduler", "tests.apps.priorities"])
    fleet.start_all()
    try:
        await fleet.wait_until_consuming(
            servers.amqp_url, {names.step_queue(): 1, names.runs_queue: 1}
        )
        client = lf.Client(backends.store, backends.broker)
        backlog = [await client.start(pr.one, "n") for _ in range(60)]
        deadline = asyncio.get_running_loop().time() + 60
        while len(await finished(redis_client, names.namespace)) < 5:  # the backlog forms
            assert asyncio.get_running_loop().time() < deadline, "the backlog never moved"
            await asyncio.sleep(0.05)
        before = len(await finished(redis_client, names.namespace))
        urgent = [await client.start(pr.one, "h", priority=3) for _ in range(4)]
        urgent += [await client.start(pr.urgent_one, "s") for _ in range(4)]
        assert [await r.result(timeout=60) for r in urgent] == ["h"] * 4 + ["s"] * 4
        assert [await r.result(timeout=120) for r in backlog] == ["n"] * 60
        assert fleet.reap() == []
    finally:
        fleet.stop_all()
    order = await finished(redis_client, names.namespace)
    last_urgent = max(i for i, tag in enumerate(order) if tag in "hs")
    # All 8 urgent steps finished within the next 8 + a few (the steps already taken).
    print(f"\nfinish order (h: priority=3 runs, s: priority=3 step): {''.join(order)}")
    assert last_urgent < before + 8 + 6, (before, "".join(order))
    assert order.count("n") == 60
