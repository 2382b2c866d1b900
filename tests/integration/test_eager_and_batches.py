"""Issue 6's fast paths on the real servers: eager dispatch, step batches, chunked appends,
and ``worker --processes``, each with the guarantee it must keep."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

import pytest
from ledgerflow.broker import StepBatch, StepMessage
from ledgerflow.eventlog.events import EventType, NewEvent
from ledgerflow.scheduler.service import Scheduler
from ledgerflow.worker.registry import steps
from ledgerflow.worker.service import Worker

import ledgerflow as lf
from tests.apps import arith
from tests.processes import cli_env, processes
from tests.servers import Servers

pytestmark = pytest.mark.integration


class PublishCounter:
    """Counts step publishes of a broker by wrapping its publish_steps/publish_step."""

    def __init__(self, broker: Any) -> None:
        self.steps = 0
        self.messages = 0
        original_many, original_one = broker.publish_steps, broker.publish_step

        async def publish_steps(msgs: Sequence[StepMessage], **kwargs: Any) -> None:
            self.steps += len(msgs)
            await original_many(msgs, **kwargs)

        async def publish_step(msg: StepMessage) -> None:
            self.steps += 1
            await original_one(msg)

        broker.publish_steps = publish_steps
        broker.publish_step = publish_step


async def started_together(
    backends: Any, *, concurrency: int, **kw: Any
) -> tuple[Worker, Scheduler]:
    worker = Worker(backends.store, backends.broker, concurrency=concurrency)
    scheduler = Scheduler(backends.store, backends.broker, local=worker, **kw)
    await worker.start()
    await scheduler.start()
    return worker, scheduler


async def stop(worker: Worker, scheduler: Scheduler) -> None:
    await worker.stop(grace=5)
    await scheduler.stop()


async def test_a_chain_runs_in_process_without_a_step_message(backends: Any) -> None:
    counter = PublishCounter(backends.broker)
    worker, scheduler = await started_together(backends, concurrency=8)
    try:
        client = lf.Client(backends.store, backends.broker)
        run = await client.start(arith.chain, 25)
        assert await run.result(timeout=30) == 25
    finally:
        await stop(worker, scheduler)
    assert counter.steps == 0
    events = await client.events(run.run_id)
    kinds = Counter(e.type for e in events)
    # The log says exactly what it says for a step that went through the queue.
    assert kinds[EventType.STEP_CREATED] == kinds[EventType.STEP_STARTED] == 25
    assert kinds[EventType.STEP_COMPLETED] == 25
    assert {e.data["worker"] for e in events if e.type is EventType.STEP_STARTED} == {
        worker.identity
    }


async def test_a_fan_out_beyond_local_room_goes_to_the_queue_in_batches(backends: Any) -> None:
    counter = PublishCounter(backends.broker)
    worker, scheduler = await started_together(backends, concurrency=4)
    try:
        client = lf.Client(backends.store, backends.broker)
        run = await client.start(arith.wide, 40)
        assert await run.result(timeout=30) == sum(range(40))
    finally:
        await stop(worker, scheduler)
    # Four ran at once in-process; the other 36 were published, 32 to a message.
    assert counter.steps == 36
    events = await client.events(run.run_id)
    assert sum(e.type is EventType.STEP_COMPLETED for e in events) == 40
    assert sum(e.type is EventType.STEP_STARTED for e in events) == 40


async def test_a_decision_is_appended_in_chunks(backends: Any) -> None:
    calls: list[int] = []
    original = backends.store.append

    async def counting(
        run_id: str, events: Sequence[NewEvent], *, based_on: str | None = None
    ) -> Any:
        if any(e.type is EventType.STEP_CREATED for e in events):
            calls.append(len(events))
        return await original(run_id, events, based_on=based_on)

    backends.store.append = counting
    worker, scheduler = await started_together(backends, concurrency=16, append_chunk=7)
    try:
        client = lf.Client(backends.store, backends.broker)
        run = await client.start(arith.wide, 30)
        assert await run.result(timeout=30) == sum(range(30))
    finally:
        await stop(worker, scheduler)
    # 30 creations in chunks of at most 7 (the worker's own appends are not counted).
    assert sum(calls) == 30 and max(calls) <= 7 and len(calls) >= 5
    creations = [e for e in await client.events(run.run_id) if e.type is EventType.STEP_CREATED]
    assert [e.corr for e in creations] == [f"s{i}" for i in range(1, 31)]


async def test_a_redelivered_batch_runs_only_the_steps_without_an_outcome(backends: Any) -> None:
    store, broker = backends.store, backends.broker
    run_id = f"batch-{os.getpid()}-{time.monotonic_ns()}"
    data = {"workflow": "it_wide", "args": [3], "kwargs": {}}
    await store.append(
        run_id,
        [
            NewEvent.of(EventType.RUN_CREATED, data=data, workflow="it_wide"),
            NewEvent.of(EventType.RUN_STARTED),
        ],
    )
    blobs = [steps.get("it_counted").encode_args((i,), {}) for i in range(3)]
    await store.append(
        run_id,
        [
            NewEvent.of(
                EventType.STEP_CREATED,
                f"s{i + 1}",
                {"name": "it_counted", "queue": "default", "args": blobs[i], "fp": "x"},
            )
            for i in range(3)
        ],
    )
    # s1 already ran to completion (the batch's first delivery got that far).
    await store.append(
        run_id,
        [
            NewEvent.of(EventType.STEP_STARTED, "s1", {"worker": "gone"}, attempt=1),
            NewEvent.of(EventType.STEP_COMPLETED, "s1", {"result": 0}, attempt=1),
        ],
    )
    arith.COUNTED.clear()
    batch = [
        StepMessage(run_id, f"s{i + 1}", "it_counted", 1, blobs[i], "default") for i in range(3)
    ]
    await broker.publish_steps(batch)
    worker = Worker(store, broker, concurrency=4)
    await worker.start()
    try:
        for _ in range(200):
            events = await store.read(run_id)
            if sum(e.type is EventType.STEP_COMPLETED for e in events) == 3:
                break
            await asyncio.sleep(0.05)
    finally:
        await worker.stop(grace=5)
    assert arith.COUNTED == {1: 1, 2: 1}
    assert sum(e.type is EventType.STEP_STARTED for e in events) == 3
    assert await broker.queue_depth(broker.names.step_queue()) == 0


async def test_an_in_process_step_cut_off_by_shutdown_goes_back_to_the_queue(
    backends: Any,
) -> None:
    worker, scheduler = await started_together(backends, concurrency=4)
    client = lf.Client(backends.store, backends.broker)
    run = await client.start(arith.nap, 30.0)
    for _ in range(200):
        if any(e.type is EventType.STEP_STARTED for e in await client.events(run.run_id)):
            break
        await asyncio.sleep(0.02)
    await worker.stop(grace=0.1)
    await scheduler.stop()
    delivery = await backends.broker.get(backends.names.step_queue(), timeout=5)
    assert delivery is not None
    message = codec_message(delivery.body)
    assert (message.step_id, message.attempt) == ("s1", 2)
    await delivery.ack()


def codec_message(body: bytes) -> StepMessage:
    from ledgerflow.broker import decode_message

    message = decode_message(body)
    if isinstance(message, StepBatch):
        (message,) = message.steps
    assert isinstance(message, StepMessage)
    return message


async def consumers(backends: Any, queue: str) -> int:
    info = await backends.broker.queue_info(queue)
    return int(info.consumers)


async def test_worker_processes_n_supervises_n_children(servers: Servers, backends: Any) -> None:
    ns = backends.names.namespace
    step_queue = await backends.broker.declare_step_queue("default")
    parent = subprocess.Popen(  # noqa: ASYNC220 - a real CLI process, stopped in finally
        [
            sys.executable,
            "-m",
            "ledgerflow",
            "worker",
            "tests.apps.arith",
            "--processes",
            "2",
            "--with-scheduler",
            "--concurrency",
            "4",
        ],
        env=cli_env(servers, ns),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        for _ in range(300):
            if await consumers(backends, step_queue) == 2:
                break
            await asyncio.sleep(0.1)
        assert await consumers(backends, step_queue) == 2
        client = lf.Client(backends.store, backends.broker)
        runs = [await client.start(arith.total, 4) for _ in range(20)]
        assert (
            await asyncio.gather(*(r.result(timeout=60) for r in runs))
            == [arith.expected_total(4)] * 20
        )
        children = [int(p) for p in child_pids(parent.pid)]
        assert len(children) == 2
        os.kill(children[0], signal.SIGKILL)
        for _ in range(300):
            now = child_pids(parent.pid)
            if len(now) == 2 and children[0] not in now:
                break
            await asyncio.sleep(0.1)
        assert len(child_pids(parent.pid)) == 2 and children[0] not in child_pids(parent.pid)
        for _ in range(300):
            if await consumers(backends, step_queue) == 2:
                break
            await asyncio.sleep(0.1)
        assert await consumers(backends, step_queue) == 2
        run = await client.start(arith.total, 3)
        assert await run.result(timeout=60) == arith.expected_total(3)
    finally:
        parent.send_signal(signal.SIGTERM)
        try:
            code = parent.wait(timeout=30)
        except subprocess.TimeoutExpired:
            parent.kill()
            raise
    assert code == 0, parent.stderr.read().decode() if parent.stderr else ""
    assert child_pids(parent.pid) == []


def child_pids(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as listing:
            text = listing.read()
    except OSError:
        return []
    return [int(p) for p in text.split()]


async def test_a_step_run_in_a_killed_process_is_recovered_by_the_reconciler(
    servers: Servers, backends: Any
) -> None:
    """No unacked message covers an in-process step: the worker's expired presence mark does."""
    from ledgerflow.scheduler.reconciler import Reconciler

    ns = backends.names.namespace
    client = lf.Client(backends.store, backends.broker)
    with processes(servers, ns, [["worker", "tests.apps.arith", "--with-scheduler"]]) as procs:
        run = await client.start(arith.slow_first_run, 120.0)
        for _ in range(300):
            started = [
                e for e in await client.events(run.run_id) if e.type is EventType.STEP_STARTED
            ]
            if started:
                break
            await asyncio.sleep(0.05)
        assert started and started[0].data["worker"].endswith(f":{procs[0].pid}")
        assert await backends.store.alive([started[0].data["worker"]]) == {
            started[0].data["worker"]
        }
        procs[0].kill()
        procs[0].wait()
    worker = Worker(backends.store, backends.broker, concurrency=4)
    await worker.start()
    reconciler = Reconciler(backends.store, backends.broker, None, stale_after=0.2)
    began = time.monotonic()
    reasons: Counter[str] = Counter()
    try:
        while time.monotonic() - began < 30:
            report = await reconciler.sweep()
            reasons.update(report.recoveries)
            if reasons["step's worker is gone"]:
                break
            await asyncio.sleep(0.5)
        # Recovered once the mark expired (10 s), not after the 600 s step limit.
        assert reasons["step's worker is gone"] == 1, reasons
        assert time.monotonic() - began < 15
        scheduler = Scheduler(backends.store, backends.broker)
        await scheduler.start()
        try:
            assert await run.result(timeout=30) == 2  # the second attempt finished it
        finally:
            await scheduler.stop()
    finally:
        await worker.stop(grace=5)


async def test_a_late_activation_of_a_finished_run_does_not_replay_its_log(
    backends: Any, running: lf.Client
) -> None:
    run = await running.start(arith.chain, 30)
    assert await run.result(timeout=30) == 30
    fresh = Scheduler(backends.store, backends.broker)  # nothing cached
    reads: list[int | None] = []
    original = backends.store.read

    async def counting(run_id: str, after: str = "0-0", count: int | None = None) -> Any:
        reads.append(count)
        return await original(run_id, after, count)

    backends.store.read = counting
    await fresh.replay_run(run.run_id)
    assert reads == [1]  # the first event (is there a parent to tell?), not 93 of them
