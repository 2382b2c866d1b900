"""Hostile payloads through every process on the real servers (issue 11, items 1, 3 and 4).

A value nested 250 deep once segfaulted every process that decoded it. Here it
is refused where it is passed, dead-lettered where it arrives by queue, and a
run whose log holds one (written around ledgerflow, with a bare XADD) is failed
once by the scheduler while the client, the CLI and the dashboard say what is
wrong. Whatever decodes such a payload runs in a separate process (a worker,
the CLI, the dashboard, a client script), so a regression fails a test instead
of killing the test run.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import aio_pika
import httpx
import msgpack
import pytest
from ledgerflow.broker import Activation, StepMessage, encode_message
from ledgerflow.broker.deadletters import DeadLetter, describe
from ledgerflow.broker.topology import MAX_MESSAGE_BYTES
from ledgerflow.eventlog import codec
from ledgerflow.eventlog.codec import MAX_DEPTH
from ledgerflow.eventlog.errors import NestingTooDeepError
from ledgerflow.scheduler.client import Client
from ledgerflow.scheduler.reconciler import Reconciler

import ledgerflow as lf
from ledgerflow.ops import metrics
from tests.apps import hostile
from tests.processes import ROOT, cli, cli_env, processes
from tests.servers import Servers

pytestmark = pytest.mark.integration

APP = "tests.apps.hostile"
DEEP = 250


@dataclasses.dataclass(frozen=True)
class Secret:
    """Defined here only: no worker or scheduler process allows this module."""

    code: str


def raw_tuples(depth: int) -> bytes:
    """``depth`` tuples inside one another, built around the encoder (which would refuse)."""
    blob = msgpack.packb(1)
    for _ in range(depth):
        blob = msgpack.packb(msgpack.ExtType(5, b"\x91" + blob))
    return blob


async def until(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


async def hook_of(client: Client, token: str) -> str:
    """The corr of the live hook with this token, once the run created it."""

    async def created() -> bool:
        return await client.store.hook_owner(token) is not None

    await until(created, f"hook {token}")
    owner = await client.store.hook_owner(token)
    assert owner is not None
    return owner[1]


async def dead_letters(backends: Any) -> list[DeadLetter]:
    broker = backends.broker
    depth = await broker.queue_depth(backends.names.dead_queue)
    async with broker.hold_dead_letters(depth) as held:
        return [describe(delivery) for delivery in held]


async def dead_count(backends: Any, count: int) -> None:
    async def enough() -> bool:
        return await backends.broker.queue_depth(backends.names.dead_queue) >= count

    await until(enough, f"{count} dead letters")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def dashboard(servers: Servers, namespace: str) -> Iterator[str]:
    """``ledgerflow dashboard`` as its own process; yields its base URL."""
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "ledgerflow", "dashboard", "--port", str(port)],
        env=cli_env(servers, namespace),
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"{url}/api/runs", timeout=2)
                break
            except httpx.TransportError:
                assert process.poll() is None, process.communicate()[1]
                assert time.monotonic() < deadline, "the dashboard did not start listening"
                time.sleep(0.1)
        yield url
        assert process.poll() is None, "the dashboard died"
    finally:
        process.terminate()
        try:
            process.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()


CLIENT_SCRIPT = textwrap.dedent(
    """
    import asyncio, sys
    from ledgerflow.scheduler.client import Client

    async def main(run_id):
        async with Client.connect() as client:
            for call in (client.events(run_id), client.result(run_id, timeout=10)):
                try:
                    await call
                    print("returned")
                except Exception as exc:
                    print(type(exc).__name__, exc)

    asyncio.run(main(sys.argv[1]))
    """
)


def client_in_subprocess(servers: Servers, namespace: str, run_id: str) -> list[str]:
    """What ``events()`` and ``result()`` raise, one line each, from a process of their own."""
    done = subprocess.run(
        [sys.executable, "-c", CLIENT_SCRIPT, run_id],
        env=cli_env(servers, namespace),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


# --- refused where they are passed ----------------------------------------------------------


async def test_values_past_the_depth_limit_fail_at_their_call_site(running: Client) -> None:
    client = running
    at_limit = await client.start(hostile.echo_nested, MAX_DEPTH)
    assert await at_limit.result(timeout=30) == hostile.nest(MAX_DEPTH)
    for depth in (MAX_DEPTH + 1, DEEP):
        run = await client.start(hostile.echo_nested, depth)
        with pytest.raises(lf.WorkflowFailedError) as step_argument:
            await run.result(timeout=30)
        assert (
            f"argument 'value' of step 'hp_echo' is nested {depth} deep, over the limit of 64"
        ) in str(step_argument.value)

    run_id = f"hp-refused-{uuid.uuid4().hex[:8]}"
    with pytest.raises(NestingTooDeepError) as workflow_argument:
        await client.start(hostile.passthrough, hostile.nest(DEEP), run_id=run_id)
    assert str(workflow_argument.value).startswith(
        f"argument 'value' of workflow 'hp_passthrough' is nested {DEEP} deep"
    )
    assert await client.store.read(run_id) == []  # nothing was written

    result = await client.start(hostile.result_of_depth, DEEP)
    with pytest.raises(lf.WorkflowFailedError) as step_result:
        await result.result(timeout=30)
    assert f"result of step 'hp_deep_result' is nested {DEEP} deep" in str(step_result.value)

    token = f"hp-{uuid.uuid4().hex}"
    waiting = await client.start(hostile.wait_for_payload, token)
    await hook_of(client, token)
    with pytest.raises(NestingTooDeepError, match=f"^hook payload is nested {DEEP} deep"):
        await client.resume_hook(token, hostile.nest(DEEP))
    await client.resume_hook(token, hostile.nest(MAX_DEPTH))
    assert await waiting.result(timeout=30) == hostile.nest(MAX_DEPTH)


# --- dead-lettered where they arrive --------------------------------------------------------


async def test_hostile_step_messages_are_dead_lettered_and_the_worker_keeps_serving(
    servers: Servers, backends: Any
) -> None:
    ns = backends.names.namespace
    queue = backends.names.step_queue()
    deep_args = b"\x92\x91" + raw_tuples(DEEP) + b"\x80"  # [[<250 tuples>], {}]
    big_args = msgpack.packb([[b"\0" * (2 * 1024 * 1024)], {}])
    with processes(servers, ns, [["worker", APP, "--with-scheduler"]]) as (worker,):
        for message_id, args in (("hp-deep", deep_args), ("hp-big", big_args)):
            message = StepMessage(message_id, "s1", "hp_echo", 1, args, "default")
            await backends.broker.publish(queue, encode_message(message), message_id=message_id)
        connection = await aio_pika.connect(servers.amqp_url)
        try:
            channel = await connection.channel()
            await channel.default_exchange.publish(
                aio_pika.Message(b"\0" * (MAX_MESSAGE_BYTES + 1), message_id="hp-huge"),
                routing_key=queue,
            )
        finally:
            await connection.close()
        await dead_count(backends, 3)
        reasons = {letter.id: letter.reason for letter in await dead_letters(backends)}
        assert "undecodable arguments of step s1" in reasons["hp-deep"]
        assert "nested more than 66 deep" in reasons["hp-deep"]
        assert "over the 1048576-byte limit" in reasons["hp-big"]
        assert f"over the {MAX_MESSAGE_BYTES}-byte limit" in reasons["hp-huge"]

        # The same worker goes on serving.
        run = await Client(backends.store, backends.broker).start(hostile.passthrough, "ok")
        assert await run.result(timeout=30) == "ok"
        assert worker.poll() is None

        listed = await asyncio.to_thread(cli, servers, ns, "dlq", "list", "--json")
        assert listed.returncode == 0, listed.stderr
        ids = {m["id"] for m in json.loads(listed.stdout)["messages"]}
        assert {"hp-deep", "hp-big", "hp-huge"} <= ids
        shown = await asyncio.to_thread(cli, servers, ns, "dlq", "show", "hp-deep")
        assert shown.returncode == 0, shown.stderr
        assert "nested more than 66 deep" in shown.stdout
        with dashboard(servers, ns) as url:
            response = await asyncio.to_thread(httpx.post, f"{url}/api/dlq", json={}, timeout=30)
        assert response.status_code == 200
        rows = {row["id"]: row for row in response.json()["messages"]}
        decoded_args = rows["hp-deep"]["decoded"]["args"]
        assert decoded_args["$type"] == "undecodable"
        assert "nested more than 66 deep" in decoded_args["error"]
        assert rows["hp-huge"]["decoded"]["$type"] == "malformed"


# --- a run whose log holds an unreadable event ----------------------------------------------


async def test_an_unreadable_event_fails_its_run_once_and_every_reader_says_why(
    servers: Servers, backends: Any, redis_client: Any
) -> None:
    ns = backends.names.namespace
    client = Client(backends.store, backends.broker)
    with processes(servers, ns, [["worker", APP, "--with-scheduler"]]) as (process,):
        token = f"hp-{uuid.uuid4().hex}"
        run = await client.start(hostile.wait_for_payload, token)
        corr = await hook_of(client, token)
        raw_id = await redis_client.xadd(
            backends.names.stream(run.run_id),
            {"type": "hook_received", "corr": corr, "data": raw_tuples(DEEP), "ts": "1", "v": "1"},
        )
        bad_id = raw_id.decode()
        await backends.broker.publish_activation(Activation(run.run_id, "test"))

        async def failed() -> bool:
            return (await backends.store.run_tail(run.run_id))[0] == "failed"

        await until(failed, "the scheduler to fail the run")
        _, last = await backends.store.run_tail(run.run_id)
        ending = await backends.store.read_event(run.run_id, last)
        assert ending is not None
        error = ending.data["error"]
        assert error["type"] == "ledgerflow.NestingTooDeepError"
        assert error["message"].startswith(f"event {bad_id} could not be decoded: nested")
        entries = await redis_client.xrange(backends.names.stream(run.run_id))
        types = [fields[b"type"] for _, fields in entries]
        assert types.count(b"run_failed") == 1
        assert b"hook_disposed" in types  # its live hook went with it
        assert await backends.broker.queue_depth(backends.names.dead_queue) == 0

        # A run whose end itself cannot be decoded: result() says so, naming run and event.
        token = f"hp-{uuid.uuid4().hex}"
        ended = await client.start(hostile.wait_for_payload, token)
        await hook_of(client, token)
        raw_end = await redis_client.xadd(
            backends.names.stream(ended.run_id),
            {"type": "run_completed", "corr": "", "data": raw_tuples(DEEP), "ts": "1", "v": "1"},
        )
        # The process goes on with other runs.
        fine = await client.start(hostile.passthrough, "still serving")
        assert await fine.result(timeout=30) == "still serving"
        assert process.poll() is None

    events, result = await asyncio.to_thread(client_in_subprocess, servers, ns, run.run_id)
    assert events.startswith(
        f"NestingTooDeepError run '{run.run_id}': event {bad_id} could not be decoded: nested"
    )
    assert result.startswith("WorkflowFailedError ledgerflow.NestingTooDeepError: event")
    _, end_result = await asyncio.to_thread(client_in_subprocess, servers, ns, ended.run_id)
    assert end_result.startswith(
        f"NestingTooDeepError run '{ended.run_id}': event {raw_end.decode()} could not be decoded"
    )

    shown = await asyncio.to_thread(cli, servers, ns, "runs", "show", run.run_id)
    assert shown.returncode == 0, shown.stderr
    assert "status failed" in shown.stdout
    assert f"undecodable: event {bad_id} could not be decoded: nested" in shown.stdout
    listed = await asyncio.to_thread(cli, servers, ns, "runs", "events", run.run_id)
    assert listed.returncode == 0, listed.stderr
    assert f"<undecodable: event {bad_id} could not be decoded" in listed.stdout
    dumped = await asyncio.to_thread(cli, servers, ns, "runs", "events", run.run_id, "--json")
    assert dumped.returncode == 0, dumped.stderr
    by_id = {e["id"]: e for e in map(json.loads, dumped.stdout.splitlines())}
    assert by_id[bad_id]["data"].startswith("<undecodable: ")
    assert by_id[bad_id]["type"] == "hook_received"

    with dashboard(servers, ns) as url:
        response = await asyncio.to_thread(httpx.get, f"{url}/api/runs/{run.run_id}", timeout=30)
    assert response.status_code == 200
    detail = response.json()
    assert detail["run"]["status"] == "failed"
    marker = next(e["data"] for e in detail["events"] if e["id"] == bad_id)
    assert marker["$type"] == "undecodable"
    assert marker["error"].startswith(f"event {bad_id} could not be decoded")


async def test_an_unknown_class_parks_the_activation_once_and_leaves_the_run(
    servers: Servers, backends: Any
) -> None:
    ns = backends.names.namespace
    client = Client(backends.store, backends.broker)
    with processes(servers, ns, [["worker", APP, "--with-scheduler"]]) as (process,):
        token = f"hp-{uuid.uuid4().hex}"
        run = await client.start(hostile.wait_for_payload, token)
        await hook_of(client, token)
        await client.resume_hook(token, Secret("s3cr3t"))  # encodes here; no worker may decode it
        await dead_count(backends, 1)
        (letter,) = await dead_letters(backends)
        assert letter.kind == "activation"
        assert letter.reason.startswith(f"run {run.run_id}: event ")
        assert f"'{__name__}.Secret'" in letter.reason
        assert "not allowed" in letter.reason
        assert (await backends.store.run_tail(run.run_id))[0] == "started"
        assert process.poll() is None


async def test_an_allowed_module_decodes_its_dataclasses_in_every_process(
    servers: Servers, backends: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker allows its APP; a producer reading results allows the module itself."""
    monkeypatch.setattr(codec, "_allowed", set())
    ns = backends.names.namespace
    client = Client(backends.store, backends.broker)
    with processes(servers, ns, [["worker", APP, "--with-scheduler"]]):
        run = await client.start(hostile.weigh, hostile.Parcel("box", 1))
        with pytest.raises(lf.UnknownTypeError, match=r"hostile\.Parcel'.*not allowed"):
            await run.result(timeout=30)
        lf.allow_modules(APP)
        assert await run.result(timeout=30) == hostile.Parcel("box", 2)


# --- the reconciler -----------------------------------------------------------------------


async def test_a_log_the_reconciler_cannot_read_is_skipped_and_counted(
    backends: Any, redis_client: Any
) -> None:
    client = Client(backends.store, backends.broker)
    broken = await client.start(hostile.passthrough, "x")
    await redis_client.xadd(
        backends.names.stream(broken.run_id),
        {"type": "no_such_event", "corr": "", "data": b"\x80", "ts": "1", "v": "1"},
    )
    deep = await client.start(hostile.passthrough, "y")
    await redis_client.xadd(
        backends.names.stream(deep.run_id),
        {"type": "step_created", "corr": "s9", "data": raw_tuples(100), "ts": "1", "v": "1"},
    )
    fine = await client.start(hostile.passthrough, "z")
    before = metrics.SKIPPED_RUNS._value.get()
    reconciler = Reconciler(backends.store, backends.broker, None, stale_after=0)
    report = await reconciler.sweep()
    assert report.runs_checked == 3
    assert report.runs_skipped == 1
    assert metrics.SKIPPED_RUNS._value.get() == before + 1
    # The others were still put back: never started, each gets its activation.
    assert report.recoveries["run never started"] == 2
    assert fine.run_id != deep.run_id
