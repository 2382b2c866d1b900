"""Output streams on real servers: written by steps, read live and resumably elsewhere.

Readers here use a client of their own (its own Redis connections), as another
process would; ``runs stream`` and the SSE endpoint are tested with the CLI and
the HTTP tests.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from ledgerflow.eventlog.settings import Settings
from ledgerflow.eventlog.store import RemoveOutcome
from ledgerflow.worker.backend import connect

import ledgerflow as lf
from tests.apps import streams as st
from tests.processes import cli
from tests.servers import Servers

pytestmark = pytest.mark.integration


@pytest_asyncio.fixture
async def reader(servers: Servers, names: Any, running: lf.Client) -> AsyncIterator[lf.Client]:
    """A second client on its own connections: a reader in another process would be one."""
    settings = Settings(servers.amqp_url, servers.redis_url, names.namespace)
    async with connect(settings) as backends:
        yield lf.Client(backends.store, backends.broker)


async def test_a_reader_gets_chunks_live_in_order_and_stops_at_the_close(
    running: lf.Client, reader: lf.Client
) -> None:
    st.GATES["live"] = asyncio.Event()
    run = await running.start(st.chat, 50, "live")
    chunks = reader.stream(run.run_id, "tokens")
    try:
        first = await asyncio.wait_for(anext(chunks), 10)
        # The step is still holding at its first chunk: the reader got it live.
        assert (first.index, first.value, first.attempt, first.restarted) == (0, "t0", 1, False)
        assert (await reader.state(run.run_id)).status.value == "started"
    finally:
        st.GATES["live"].set()
    rest = [c async for c in chunks]
    assert [c.value for c in rest] == [f"t{i}" for i in range(1, 50)]
    assert [c.index for c in rest] == list(range(1, 50))
    assert await run.result(timeout=10) == 50
    # After the run: the whole stream again, or its tail from any position.
    assert len([c async for c in reader.stream(run.run_id, "tokens")]) == 50
    tail = [c.value async for c in reader.stream(run.run_id, "tokens", start=47)]
    assert tail == ["t47", "t48", "t49"]
    assert [c async for c in reader.stream(run.run_id, "tokens", start=51)] == []
    assert await reader.streams(run.run_id) == ["tokens"]


async def test_a_retried_attempt_is_marked_restarted_not_mixed_in(
    running: lf.Client, reader: lf.Client
) -> None:
    run = await running.start(st.flaky_chat, 4)
    assert await run.result(timeout=20) == "done on attempt 2"
    chunks = [c async for c in reader.stream(run.run_id, "tokens")]
    assert [(c.attempt, c.value["i"], c.restarted) for c in chunks] == [
        (1, 0, False),
        (1, 1, False),
        (1, 2, False),
        (2, 0, True),
        (2, 1, False),
        (2, 2, False),
        (2, 3, False),
    ]
    assert {c.step for c in chunks} == {"s1"}
    # What a reader that honours "restarted" shows: attempt 2's chunks only.
    shown: list[Any] = []
    for chunk in chunks:
        if chunk.restarted:
            shown = [v for v in shown if v["attempt"] >= chunk.attempt]
        shown.append(chunk.value)
    assert [v["attempt"] for v in shown] == [2, 2, 2, 2]


async def test_a_stream_left_open_ends_with_the_run(running: lf.Client, reader: lf.Client) -> None:
    run = await running.start(st.two_writers, 1.0)
    seen = [c async for c in reader.stream(run.run_id, "log")]
    assert [c.value for c in seen] == ["a0", "a1", "b0", "b1"]
    assert [c.step for c in seen] == ["s1", "s1", "s2", "s2"]
    assert (await reader.state(run.run_id)).status.value == "completed"  # it ended the stream


async def test_a_closed_stream_refuses_another_writer_and_workflows_cannot_write(
    running: lf.Client,
) -> None:
    run = await running.start(st.write_after_close)
    with pytest.raises(lf.WorkflowFailedError, match="closed by its writer"):
        await run.result(timeout=20)
    run = await running.start(st.streams_from_workflow)
    with pytest.raises(lf.WorkflowFailedError, match="workflow streams through a step"):
        await run.result(timeout=20)


async def test_reading_a_missing_run_or_a_bad_name_is_a_clear_error(reader: lf.Client) -> None:
    with pytest.raises(lf.RunNotFoundError):
        await anext(reader.stream("no-such-run", "tokens"))
    with pytest.raises(lf.InvalidArgumentError, match="invalid stream name"):
        await anext(reader.stream("no-such-run", "../etc"))
    with pytest.raises(lf.InvalidArgumentError, match="invalid stream position"):
        await anext(reader.stream("no-such-run", "tokens", start=-1))


async def test_removing_the_run_removes_its_streams_and_ends_a_reader(
    running: lf.Client, reader: lf.Client, backends: Any, redis_client: Any
) -> None:
    run = await running.start(st.chat, 3)
    assert await run.result(timeout=10) == 3
    key = backends.store.names.output(run.run_id, "tokens")
    assert await redis_client.exists(key)
    assert await backends.store.remove_run(run.run_id) is RemoveOutcome.REMOVED
    assert not await redis_client.exists(key)
    assert not await redis_client.exists(backends.store.names.output_set(run.run_id))
    with pytest.raises(lf.RunNotFoundError):
        await anext(reader.stream(run.run_id, "tokens"))


async def test_runs_stream_follows_a_live_run_and_prints_safely(
    running: lf.Client, servers: Servers, names: Any
) -> None:
    st.GATES["cli"] = asyncio.Event()
    run = await running.start(st.chat, 3, "cli")
    ns = names.namespace
    try:
        following = asyncio.create_task(
            asyncio.to_thread(cli, servers, ns, "runs", "stream", run.run_id, "tokens")
        )
        await asyncio.sleep(1.0)
        assert not following.done()  # it waits for the step to go on
    finally:
        st.GATES["cli"].set()
    shown = await asyncio.wait_for(following, 60)
    assert shown.returncode == 0, shown.stderr
    assert [line.split()[:3] for line in shown.stdout.splitlines()] == [
        ["0", "s1#1", "'t0'"],
        ["1", "s1#1", "'t1'"],
        ["2", "s1#1", "'t2'"],
    ]
    as_json = await asyncio.to_thread(
        cli, servers, ns, "runs", "stream", run.run_id, "tokens", "--json", "--start", "2"
    )
    assert [json.loads(line) for line in as_json.stdout.splitlines()] == [
        {"index": 2, "step": "s1", "attempt": 1, "restarted": False, "value": "t2"}
    ]
    hostile = await running.start(st.say, ["Hello,", " world\n", "\x1b[2J", "\u202e!"])
    await hostile.result(timeout=20)
    text = await asyncio.to_thread(
        cli, servers, ns, "runs", "stream", hostile.run_id, "tokens", "--text"
    )
    assert text.returncode == 0, text.stderr
    assert text.stdout == "Hello, world\n\\x1b[2J\\u202e!\n"
    for bad in (["runs", "stream", run.run_id, "no such"], ["runs", "stream", "a|b", "tokens"]):
        refused = await asyncio.to_thread(cli, servers, ns, *bad)
        assert refused.returncode == 2 and "invalid" in refused.stderr
    missing = await asyncio.to_thread(cli, servers, ns, "runs", "stream", "nope", "tokens")
    assert missing.returncode != 0 and "does not exist" in missing.stderr
