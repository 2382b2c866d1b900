"""Producers are never misled by a RabbitMQ outage (issue 11, item 9).

Once ``start()``, ``resume_hook()`` or ``cancel()`` has recorded its event, it
returns normally even if RabbitMQ is down: the activation is retried briefly,
then left to the reconciler, which finds each recorded event with nothing
acting on it. A producer that retried on an error would otherwise start a
second run or deliver a payload twice.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import pytest
from ledgerflow.eventlog.events import Event, EventType
from ledgerflow.scheduler.reconciler import Reconciler
from structlog.testing import capture_logs

import ledgerflow as lf
from tests.apps import arith, waiting
from tests.integration.test_worker_failures import wait_for_events
from tests.outages import rabbitmq_app_stopped

pytestmark = pytest.mark.integration

NOT_PUBLISHED = "activation not published; the reconciler will send it"
ONCE = frozenset(
    {
        EventType.RUN_CREATED,
        EventType.RUN_STARTED,
        EventType.STEP_COMPLETED,
        EventType.STEP_FAILED,
        EventType.HOOK_RECEIVED,
        EventType.RUN_COMPLETED,
        EventType.RUN_FAILED,
        EventType.RUN_CANCELLED,
    }
)


def of(events: list[Event], kind: EventType) -> list[Event]:
    return [e for e in events if e.type is kind]


def assert_nothing_twice(events: list[Event]) -> None:
    seen = Counter((e.type, e.corr) for e in events if e.type in ONCE)
    assert max(seen.values()) == 1, f"recorded twice: {seen.most_common(3)}"
    ends = (EventType.RUN_COMPLETED, EventType.RUN_FAILED, EventType.RUN_CANCELLED)
    assert sum(seen[(kind, "")] for kind in ends) == 1, "the run did not end exactly once"


async def test_start_resume_and_cancel_return_while_rabbitmq_is_down(
    running: lf.Client, backends: Any, namespace: str
) -> None:
    approval = await running.start(waiting.approval, namespace)
    parent = await running.start(waiting.parent_of_sleepers, 3600.0)
    await wait_for_events(running, approval.run_id, lambda ev: bool(of(ev, EventType.HOOK_CREATED)))
    events = await wait_for_events(
        running, parent.run_id, lambda ev: len(of(ev, EventType.STEP_STARTED)) == 2
    )
    child_id = str(of(events, EventType.STEP_CREATED)[0].data["child_run_id"])
    await wait_for_events(running, child_id, lambda ev: bool(of(ev, EventType.WAIT_CREATED)))

    producer = lf.Client(backends.store, backends.broker, publish_deadline=1.0)
    with capture_logs() as logs, rabbitmq_app_stopped():
        started = await asyncio.wait_for(producer.start(arith.total, 3), 10)
        resumed = await asyncio.wait_for(
            producer.resume_hook(f"approve-{namespace}", {"ok": True}), 10
        )
        await asyncio.wait_for(producer.cancel(child_id, reason="outage test"), 10)
    assert resumed == approval.run_id
    warned = {(w["recorded"], w["run_id"]) for w in logs if w["event"] == NOT_PUBLISHED}
    assert warned == {
        ("run_created", started.run_id),
        ("hook_received", approval.run_id),
        ("step_failed", parent.run_id),  # the cancelled child's outcome, in its parent's log
    }
    assert all(w["log_level"] == "warning" for w in logs if w["event"] == NOT_PUBLISHED)
    # Recorded, and nothing acted on it: nobody was told.
    assert (await producer.state(started.run_id)).status == "created"

    reconciler = Reconciler(backends.store, backends.broker, None, stale_after=0.5)
    await asyncio.sleep(0.6)
    report = await reconciler.sweep()
    assert report.recoveries["run never started"] >= 1
    assert report.recoveries["outcome not acted on"] >= 2

    assert await started.result(timeout=30) == arith.expected_total(3)
    assert await approval.result(timeout=30) == {"ok": True}
    with pytest.raises(lf.RunCancelled):
        await running.result(child_id, timeout=5)
    with pytest.raises(lf.WorkflowFailedError, match="RunCancelled"):
        await parent.result(timeout=30)
    for run_id in (started.run_id, approval.run_id, child_id, parent.run_id):
        assert_nothing_twice(await running.events(run_id))
