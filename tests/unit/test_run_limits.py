"""@lf.workflow(concurrency=...): at most N active runs per key, embedded (memory store).

Checked on the logs alone: a waiting run records nothing until it starts, and no two
runs of one key are ever started and unfinished at the same time.
"""

from __future__ import annotations

import asyncio
import itertools

from ledgerflow.eventlog.events import Event, EventType
from ledgerflow.scheduler.reconciler import Reconciler

import ledgerflow as lf
from tests.apps import limits


def span(events: list[Event]) -> tuple[int, int]:
    started = next(e.ts for e in events if e.type is EventType.RUN_STARTED)
    ended = next(
        e.ts for e in events if e.type in (EventType.RUN_COMPLETED, EventType.RUN_CANCELLED)
    )
    return started, ended


async def test_runs_of_one_key_take_turns_and_other_keys_do_not_wait() -> None:
    async with lf.embedded() as client:
        busy = [await client.start(limits.tenant_job, "acme", 1.0) for _ in range(3)]
        other = await client.start(limits.tenant_job, "globex", 0.0)
        assert await other.result(timeout=20) == "globex"  # not behind acme's
        # While acme's first run sleeps, its others wait: created, nothing else recorded.
        waiting = [await client.events(r.run_id) for r in busy]
        assert sum(EventType.RUN_STARTED in [e.type for e in log] for log in waiting) == 1
        assert [await r.result(timeout=20) for r in busy] == ["acme"] * 3
        spans = sorted([span(await client.events(r.run_id)) for r in busy])
    for (_, ended), (started, _) in itertools.pairwise(spans):
        assert started >= ended  # one at a time


async def test_a_cancelled_holder_is_released_by_the_sweep_and_the_next_run_starts() -> None:
    async with lf.embedded() as client:
        first = await client.start(limits.tenant_job, "initech", 3600.0)
        second = await client.start(limits.tenant_job, "initech", 0.0)
        for _ in range(100):
            if any(e.type is EventType.WAIT_CREATED for e in await client.events(first.run_id)):
                break
            await asyncio.sleep(0.05)
        await client.cancel(first.run_id, "stop")  # ended where no scheduler releases it
        await asyncio.sleep(0.3)
        assert [e.type for e in await client.events(second.run_id)] == [EventType.RUN_CREATED]
        reconciler = Reconciler(client.store, client.broker, None, stale_after=3600)  # type: ignore[arg-type]
        report = await reconciler.sweep()
        assert report.recoveries["slot of an ended run released"] == 1
        assert await second.result(timeout=20) == "initech"
        # Its scheduler releases its slot just after recording its end.
        for _ in range(100):
            if not await client.store.slot_uses():  # type: ignore[attr-defined]
                break
            await asyncio.sleep(0.02)
        assert await client.store.slot_uses() == []  # type: ignore[attr-defined]
