"""The runbook commands end to end: real servers, the CLI as a subprocess, real values."""

from __future__ import annotations

import asyncio
import json
import subprocess
from typing import Any

import pytest
from ledgerflow.broker import Activation, encode_message
from ledgerflow.broker.deadletters import REQUEUES_HEADER
from ledgerflow.eventlog.events import EventType
from ledgerflow.worker.service import Worker

import ledgerflow as lf
from tests.apps import arith
from tests.integration.test_worker_failures import wait_for_events
from tests.processes import cli
from tests.servers import Servers

pytestmark = pytest.mark.integration


async def run_cli(servers: Servers, ns: str, *args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(cli, servers, ns, *args)


def parsed(result: subprocess.CompletedProcess[str]) -> Any:
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout)


async def test_list_show_and_state_of_a_finished_run(
    servers: Servers, running: lf.Client, backends: Any
) -> None:
    ns = backends.names.namespace
    run = await running.start(arith.fan_chain, 4, 1)
    assert await run.result(timeout=30) == arith.expected_fan_chain(4, 1)
    events = await running.events(run.run_id)

    listed = parsed(await run_cli(servers, ns, "runs", "list", "--json"))
    assert [(r["run_id"], r["workflow"], r["status"]) for r in listed] == [
        (run.run_id, "it_fan_chain", "completed")
    ]
    assert listed[0]["events"] == len(events)
    assert parsed(await run_cli(servers, ns, "runs", "list", "--status", "failed", "--json")) == []
    assert len(parsed(await run_cli(servers, ns, "runs", "list", "--since", "1h", "--json"))) == 1
    future = await run_cli(servers, ns, "runs", "list", "--since", "2999-01-01T00:00:00", "--json")
    assert parsed(future) == []
    text = await run_cli(servers, ns, "runs", "list", "--workflow", "it_fan_chain")
    assert text.returncode == 0 and run.run_id in text.stdout and "completed" in text.stdout
    assert (await run_cli(servers, ns, "runs", "list", "--since", "soon")).returncode == 2

    shown = await run_cli(servers, ns, "runs", "show", run.run_id)
    assert shown.returncode == 0, shown.stderr
    assert "par" in shown.stdout.splitlines()[1] and shown.stdout.count("step_completed") == 5
    rows = parsed(await run_cli(servers, ns, "runs", "show", run.run_id, "--json"))
    assert len(rows) == len(events)
    started = [r for r in rows if r["event"] == "step_started"]
    assert all(r["lane"] is not None for r in started)
    # The chained step starts after the fan-out has finished: alone in its lane.
    assert started[-1]["running"] == [started[-1]["lane"]]

    first = parsed(await run_cli(servers, ns, "runs", "state", run.run_id, "--at", "1", "--json"))
    assert (first["status"], first["at"], first["steps"]) == ("created", 1, [])
    assert first["events"] == len(events)
    # Just after the first step_created: one step, created, no attempt yet.
    n = next(i for i, e in enumerate(events, 1) if e.type is EventType.STEP_CREATED)
    mid = parsed(await run_cli(servers, ns, "runs", "state", run.run_id, "--at", str(n), "--json"))
    assert mid["status"] == "started"
    assert [(s["id"], s["name"], s["status"]) for s in mid["steps"]] == [
        ("s1", "it_slow_add", "created")
    ]
    last = parsed(await run_cli(servers, ns, "runs", "state", run.run_id, "--json"))
    assert last["status"] == "completed"
    assert last["result"] == arith.expected_fan_chain(4, 1)
    assert {s["status"] for s in last["steps"]} == {"completed"} and len(last["steps"]) == 5
    table = await run_cli(servers, ns, "runs", "state", run.run_id, "--at", str(len(events)))
    assert "status completed" in table.stdout and "it_slow_add" in table.stdout

    too_far = await run_cli(servers, ns, "runs", "state", run.run_id, "--at", str(len(events) + 1))
    assert too_far.returncode == 2 and "out of range" in too_far.stderr
    assert (await run_cli(servers, ns, "runs", "state", run.run_id, "--at", "0")).returncode == 2
    for command in ("show", "state"):
        missing = await run_cli(servers, ns, "runs", command, "no-such-run")
        assert missing.returncode == 4, missing.stderr
    assert (await run_cli(servers, ns, "runs", "nonsense")).returncode == 2

    cancel = await run_cli(servers, ns, "runs", "cancel", "no-such-run", "--json")
    assert cancel.returncode == 4


async def test_redrive_re_enqueues_a_step_whose_message_was_purged(
    servers: Servers, scheduling: lf.Client, backends: Any
) -> None:
    ns, broker, names = backends.names.namespace, backends.broker, backends.names
    run = await scheduling.start(arith.total, 1)
    await wait_for_events(
        scheduling, run.run_id, lambda ev: any(e.type is EventType.STEP_CREATED for e in ev)
    )
    step_queue = names.step_queue()
    for _ in range(100):  # the publish follows the append
        if await broker.queue_depth(step_queue) == 1:
            break
        await asyncio.sleep(0.05)
    assert await broker.purge(step_queue) == 1

    queues = parsed(await run_cli(servers, ns, "queues", "--json"))
    by_name = {q["queue"]: q for q in queues}
    assert (by_name[step_queue]["depth"], by_name[step_queue]["consumers"]) == (0, 0)
    assert by_name[names.runs_queue]["consumers"] >= 1  # the scheduler
    assert by_name[names.dead_queue]["depth"] == 0

    redriven = parsed(await run_cli(servers, ns, "runs", "redrive", run.run_id, "--json"))
    actions = redriven["runs"][run.run_id]
    assert {"entity": "step s1", "reason": "step never started"} in actions
    assert any(a["entity"] == "run" for a in actions)
    assert redriven["not_found"] == []
    assert await broker.queue_depth(step_queue) == 1

    table = await run_cli(servers, ns, "queues")
    assert table.returncode == 0, table.stderr
    line = next(x for x in table.stdout.splitlines() if x.startswith(step_queue))
    # OLDEST from the log: the step has waited since its step_created.
    assert line.split()[1:4] == ["steps", "1", "0"] and line.split()[4].endswith("s")
    assert "from the event log" in table.stdout and "n/a" not in table.stdout

    worker = Worker(backends.store, broker, concurrency=4)
    await worker.start()
    try:
        assert await run.result(timeout=30) == arith.expected_total(1)
    finally:
        await worker.stop()

    done = parsed(await run_cli(servers, ns, "runs", "redrive", run.run_id, "--json"))
    assert done["runs"] == {run.run_id: []}  # finished: nothing is ever sent for it
    unknown = await run_cli(servers, ns, "runs", "redrive", run.run_id, "no-such-run")
    assert unknown.returncode == 4 and "no-such-run: no such run" in unknown.stderr
    assert (await run_cli(servers, ns, "runs", "redrive")).returncode == 2
    stuck = parsed(await run_cli(servers, ns, "runs", "redrive", "--all-stuck", "--json"))
    assert stuck == {"runs": {}, "not_found": []}


async def test_queues_ages_come_from_the_log_for_created_steps(
    servers: Servers, scheduling: lf.Client, backends: Any
) -> None:
    ns, names = backends.names.namespace, backends.names
    run = await scheduling.start(arith.total, 1)  # a scheduler, no worker: steps wait
    await wait_for_events(
        scheduling, run.run_id, lambda ev: any(e.type is EventType.STEP_CREATED for e in ev)
    )
    await asyncio.sleep(1.2)

    queues = parsed(await run_cli(servers, ns, "queues", "--queue", "idle", "--json"))
    by_name = {q["queue"]: q for q in queues}
    waiting = by_name[names.step_queue()]
    assert waiting["source"] == "log" and waiting["oldest_age_s"] >= 1.0, waiting
    idle = by_name[names.step_queue("idle")]
    assert (idle["source"], idle["oldest_age_s"]) == ("log", None)
    # The scheduler acted on everything: its newest entries are its own step_created.
    runs = by_name[names.runs_queue]
    assert (runs["source"], runs["oldest_age_s"], runs["note"]) == ("log", None, None)
    assert by_name[names.dead_queue]["source"] == "queue"

    table = await run_cli(servers, ns, "queues")
    assert table.returncode == 0, table.stderr
    line = next(x for x in table.stdout.splitlines() if x.startswith(names.step_queue()))
    assert line.split()[1] == "steps" and line.split()[-1].endswith("s")
    assert "from the event log" in table.stdout

    # A bound of one run still finds it, and says nothing was cut short.
    bounded = parsed(await run_cli(servers, ns, "queues", "--max-runs", "1", "--json"))
    assert {q["queue"]: q["note"] for q in bounded}[names.step_queue()] is None
    assert (await run_cli(servers, ns, "queues", "--max-runs", "0")).returncode == 2


async def test_queues_age_of_the_runs_queue_is_the_oldest_unacted_outcome(
    servers: Servers, backends: Any
) -> None:
    from ledgerflow.scheduler.client import Client

    ns, names = backends.names.namespace, backends.names
    client = Client(backends.store, backends.broker)  # no scheduler: run_created is unacted
    first = await client.start(arith.total, 1)
    await asyncio.sleep(1.2)
    await client.start(arith.total, 2)

    queues = parsed(await run_cli(servers, ns, "queues", "--json"))
    by_name = {q["queue"]: q for q in queues}
    runs = by_name[names.runs_queue]
    assert runs["source"] == "log" and runs["oldest_age_s"] >= 1.0, runs
    assert runs["depth"] == 2 and runs["consumers"] == 0
    assert by_name[names.step_queue()]["oldest_age_s"] is None

    # Cut short at one run: still an age (of the oldest run seen), and a note saying so.
    cut = parsed(await run_cli(servers, ns, "queues", "--max-runs", "1", "--json"))
    runs = {q["queue"]: q for q in cut}[names.runs_queue]
    assert runs["oldest_age_s"] is not None and "scan stopped at 1 active runs" in runs["note"]
    assert await backends.store.is_active(first.run_id)


async def test_dead_letters_listed_shown_requeued_and_purged(
    servers: Servers, backends: Any
) -> None:
    ns, broker, names = backends.names.namespace, backends.broker, backends.names
    dead, runs_queue = names.dead_queue, names.runs_queue
    garbage = b"\x00not msgpack at all"
    # A poison message through the real path: received, undecodable, dead-lettered by us.
    await broker.publish(runs_queue, garbage, message_id="garbage-1")
    delivery = await broker.get(runs_queue, timeout=5)
    assert delivery is not None
    assert await broker.receive(delivery, Activation, wrong_kind="not an activation") is None
    # And one RabbitMQ dead-letters itself (rejected): no headers of ours, only x-death.
    await broker.publish(runs_queue, encode_message(Activation("run-7")), message_id="act-7")
    rejected = await broker.get(runs_queue, timeout=5)
    assert rejected is not None
    await rejected.nack(requeue=False)
    for _ in range(100):
        if await broker.queue_depth(dead) == 2:
            break
        await asyncio.sleep(0.05)
    assert await broker.queue_depth(dead) == 2

    listing = parsed(await run_cli(servers, ns, "dlq", "list", "--json"))
    assert listing["depth"] == 2
    messages = listing["messages"]
    assert [m["id"] for m in messages] == ["garbage-1", "act-7"]
    assert messages[0]["queue"] == runs_queue and "malformed message" in messages[0]["reason"]
    assert messages[0]["kind"] == "?" and messages[0]["dead_at_ms"] > 0
    assert (messages[1]["queue"], messages[1]["reason"]) == (runs_queue, "rejected")
    assert (messages[1]["kind"], messages[1]["run_id"]) == ("activation", "run-7")
    assert messages[1]["dead_at_ms"] is not None
    # Listing again changes nothing: same messages, same order, nothing lost.
    again = parsed(await run_cli(servers, ns, "dlq", "list", "--json"))
    assert [m["id"] for m in again["messages"]] == ["garbage-1", "act-7"]
    assert await broker.queue_depth(dead) == 2
    table = await run_cli(servers, ns, "dlq", "list")
    assert table.returncode == 0 and "garbage-1" in table.stdout and "rejected" in table.stdout

    shown = parsed(await run_cli(servers, ns, "dlq", "show", "garbage-1", "--json"))
    assert len(shown) == 1 and shown[0]["body_hex"] == garbage.hex()
    assert shown[0]["message"] is None and "not valid msgpack" in shown[0]["decode_error"]
    assert shown[0]["headers"]["x-ledgerflow-queue"] == runs_queue
    decoded = parsed(await run_cli(servers, ns, "dlq", "show", "act-7", "--json"))
    assert decoded[0]["message"] == {"run_id": "run-7", "reason": ""}
    text = await run_cli(servers, ns, "dlq", "show", "garbage-1")
    assert "not a ledgerflow message" in text.stdout and garbage.hex() in text.stdout
    assert (await run_cli(servers, ns, "dlq", "show", "nope")).returncode == 4

    refused = await run_cli(servers, ns, "dlq", "purge")
    assert refused.returncode == 2 and "--yes" in refused.stderr
    assert await broker.queue_depth(dead) == 2
    assert (await run_cli(servers, ns, "dlq", "requeue")).returncode == 2
    assert (await run_cli(servers, ns, "dlq", "requeue", "nope")).returncode == 4

    requeued = parsed(await run_cli(servers, ns, "dlq", "requeue", "act-7", "--json"))
    assert requeued["requeued"] == [{"id": "act-7", "queue": runs_queue}]
    assert await broker.queue_depth(dead) == 1
    back = await broker.get(runs_queue, timeout=5)
    assert back is not None
    assert back.body == encode_message(Activation("run-7")) and back.message_id == "act-7"
    assert back.delivery_count == 1  # a fresh message: no attempt burnt, whatever was listed
    assert "x-death" not in back.headers and back.headers[REQUEUES_HEADER] == 1
    await back.ack()

    purged = parsed(await run_cli(servers, ns, "dlq", "purge", "--yes", "--json"))
    assert purged == {"purged": 1}
    assert await broker.queue_depth(dead) == 0
    empty = await run_cli(servers, ns, "dlq", "list")
    assert empty.returncode == 0 and "is empty" in empty.stdout


async def test_unreachable_rabbitmq_is_exit_code_3(servers: Servers, namespace: str) -> None:
    bad_url = "amqp://guest:guest@127.0.0.1:1/"
    down = await run_cli(servers, namespace, "--amqp-url", bad_url, "queues")
    assert down.returncode == 3, down.stdout + down.stderr
