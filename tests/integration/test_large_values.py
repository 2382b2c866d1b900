"""Large values out of line: a 10 MB result round-trips, replays and exports; bad refs fail."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from ledgerflow.broker import Activation
from ledgerflow.eventlog import codec
from ledgerflow.eventlog.blobs import BlobCache, BlobRef, fetch_value
from ledgerflow.eventlog.errors import BlobError
from ledgerflow.eventlog.events import EventType, NewEvent
from ledgerflow.eventlog.names import shard_of
from ledgerflow.eventlog.records import StepCreated
from ledgerflow.scheduler.archive import ArchiveOutcome, Archiver, read_archive
from ledgerflow.scheduler.client import Client
from ledgerflow.scheduler.embedded import serving
from ledgerflow.scheduler.history import dump_history, load_history
from ledgerflow.scheduler.janitor import Janitor

import ledgerflow as lf
from ledgerflow import testing
from ledgerflow.ops.archive import DirectorySink
from tests.apps import large

pytestmark = pytest.mark.integration


@pytest.fixture
async def uncached(backends: Any) -> AsyncIterator[Client]:
    """A worker and a scheduler that caches no instance: every activation replays from the
    start, so every offloaded value replay delivers is fetched again (a cache miss)."""
    async with serving(
        backends.store, backends.broker, concurrency=4, scheduler={"cache_size": 0}
    ) as client:
        yield client


def expected(size: int, seed: str) -> bytes:
    block = hashlib.sha256(seed.encode()).digest()
    return (block * (size // len(block) + 1))[:size]


async def stream_bytes(redis_client: Any, key: str) -> int:
    entries = await redis_client.xrange(key)
    return sum(len(k) + len(v) for _, fields in entries for k, v in fields.items())


async def test_a_ten_mb_step_result_round_trips_out_of_line(
    uncached: Client, backends: Any, redis_client: Any
) -> None:
    run = await uncached.start(large.round_trip, large.TEN_MB, "a")
    result = await run.result(timeout=120)
    data = expected(large.TEN_MB, "a")
    assert result["echo"] == data
    assert result["head"] == data[:16]
    assert result["facts"] == {
        "size": large.TEN_MB,
        "sha256": large.digest(data),
        "label": "passed on",
    }

    names = backends.store.names
    # The log stays small: the result, the argument and the run's result are references.
    assert await stream_bytes(redis_client, names.stream(run.run_id)) < 64 * 1024
    events = await uncached.events(run.run_id)
    created = [e.record for e in events if isinstance(e.record, StepCreated)]
    assert all(c.args is not None and len(c.args) < 1024 for c in created)  # messages too
    completed = next(e for e in events if e.type is EventType.STEP_COMPLETED)
    ref = completed.data["result"]
    assert ref == BlobRef(large.digest(codec.encode(data, max_size=None)), ref.size)
    # Stored once (the step's result and the next step's argument are one value; the
    # run's result map is another), under exactly the design's key names.
    stored = await redis_client.smembers(names.blob_set(run.run_id))
    assert ref.digest.encode() in stored
    assert len(stored) == 2
    tag = names.shard_tag(shard_of(run.run_id, names.shards))
    assert names.blob(run.run_id, ref.digest) == (
        f"{names.namespace}:{tag}:blob:{run.run_id}:{ref.digest}"
    )
    assert names.blob_set(run.run_id) == f"{names.namespace}:{tag}:blobs:{run.run_id}"
    assert await redis_client.strlen(names.blob(run.run_id, ref.digest)) == ref.size

    # Removed with its run by retention (the namespace default, here 1 ms).
    await asyncio.sleep(0.01)
    report = await Janitor(backends.store, default_retention_ms=1, observers=[]).sweep()
    assert report.removed == 1
    assert await redis_client.exists(names.blob_set(run.run_id)) == 0
    assert await redis_client.keys(f"{names.namespace}:blob:*") == []
    with pytest.raises(lf.RunNotFoundError):
        await run.result(timeout=5)


async def test_an_archive_of_a_ten_mb_result_carries_it_and_replays(
    running: Client, backends: Any, redis_client: Any, tmp_path: Path
) -> None:
    run = await running.start(large.round_trip, large.TEN_MB, "c")
    await run.result(timeout=120)
    archived = await Archiver(backends.store, DirectorySink(tmp_path)).archive(run.run_id)
    assert archived.outcome is ArchiveOutcome.ARCHIVED
    history = await read_archive(tmp_path / archived.name)
    assert len(history.blobs) == 2  # the step result, the run result
    assert any(len(blob) > large.TEN_MB for blob in history.blobs.values())
    outcome = testing.replay(tmp_path / archived.name, large.round_trip)
    assert outcome.finished and "completed" in outcome.summary()
    # Archiving removed the run, its offloaded values with it.
    names = backends.store.names
    assert await redis_client.exists(names.blob_set(run.run_id), names.stream(run.run_id)) == 0
    assert await redis_client.keys(f"{names.namespace}:blob:*") == []


async def test_an_export_is_self_contained_and_replays(
    running: Client, backends: Any, tmp_path: Path
) -> None:
    run = await running.start(large.round_trip, 300_000, "b")
    await run.result(timeout=60)
    path = tmp_path / "run.jsonl"
    dump_history(await running.history(run.run_id), path)
    loaded = load_history(path)
    assert len(loaded.blobs) == 2  # the step result, the run result
    outcome = testing.replay(path, large.round_trip)
    assert outcome.finished
    assert "completed" in outcome.summary()
    # Without the blobs the history cannot be replayed, and says why.
    with pytest.raises(lf.LedgerflowError, match="does not hold"):
        testing.replay(list(loaded), large.round_trip, run_id=run.run_id)
    # A blob line whose bytes were edited is refused on load.
    text = path.read_text().splitlines()
    blob_line = next(i for i, line in enumerate(text) if line.startswith('{"blob"'))
    text[blob_line] = text[blob_line].replace('"base64": "', '"base64": "AAAA', 1)
    path.write_text("\n".join(text) + "\n")
    with pytest.raises(lf.LedgerflowError, match="does not match its bytes"):
        load_history(path)


async def test_large_workflow_arguments_and_hook_payloads_go_out_of_line(
    running: Client, backends: Any, redis_client: Any
) -> None:
    data = expected(200_000, "c")
    run = await running.start(large.big_args, data)
    assert await run.result(timeout=60) == large.digest(data)
    created = (await running.events(run.run_id))[0]
    assert isinstance(created.data["args"][0], BlobRef)

    hooked = await running.start(large.big_hook)
    for _ in range(200):
        try:
            await running.resume_hook("lg-hook-token", data)
            break
        except lf.HookNotFoundError:
            await asyncio.sleep(0.05)
    assert await hooked.result(timeout=60) == len(data)
    received = next(
        e for e in await running.events(hooked.run_id) if e.type is EventType.HOOK_RECEIVED
    )
    assert isinstance(received.data["payload"], BlobRef)
    names = backends.store.names
    assert await stream_bytes(redis_client, names.stream(hooked.run_id)) < 16 * 1024


async def test_values_over_the_offload_limit_are_refused_at_the_call_site(
    backends: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LEDGERFLOW_MAX_VALUE_BYTES", str(100_000))
    client = Client(backends.store, backends.broker)
    with pytest.raises(lf.PayloadTooLargeError, match="over the 100000-byte limit for one value"):
        await client.start(large.big_args, b"x" * 200_000, run_id="too-big")
    assert await backends.store.read("too-big") == []


async def test_hostile_references_give_clear_errors(
    running: Client, backends: Any, redis_client: Any
) -> None:
    store = backends.store
    run = await running.start(large.big_args, expected(100_000, "d"))
    await run.result(timeout=60)
    created = (await running.events(run.run_id))[0]
    ref = created.data["args"][0]
    assert isinstance(ref, BlobRef)
    assert len(await fetch_value(store.blob_store, run.run_id, ref)) == 100_000

    with pytest.raises(BlobError, match="holds no blob"):  # unknown digest
        await fetch_value(store.blob_store, run.run_id, BlobRef("0" * 64, 10))
    with pytest.raises(BlobError, match="holds no blob"):  # another run's value
        await fetch_value(store.blob_store, "some-other-run", ref)
    with pytest.raises(BlobError, match=r"over the \d+-byte limit for one value"):  # huge size
        await BlobCache(store.blob_store).fetch(run.run_id, BlobRef(ref.digest, 1 << 39))
    with pytest.raises(BlobError, match="reference says"):  # size differs from the stored
        await fetch_value(store.blob_store, run.run_id, BlobRef(ref.digest, ref.size - 1))
    # The stored bytes replaced (same size): the checksum refuses them.
    key = store.names.blob(run.run_id, ref.digest)
    await redis_client.set(key, b"\0" * ref.size)
    with pytest.raises(BlobError, match="does not match its checksum"):
        await fetch_value(store.blob_store, run.run_id, ref)


async def test_an_event_naming_a_missing_blob_fails_its_run_clearly(
    running: Client, backends: Any
) -> None:
    hooked = await running.start(large.big_hook)
    for _ in range(200):
        if await backends.store.hook_owner("lg-hook-token") is not None:
            break
        await asyncio.sleep(0.05)
    owner = await backends.store.hook_owner("lg-hook-token")
    assert owner is not None
    forged = NewEvent.of(EventType.HOOK_RECEIVED, owner[1], {"payload": BlobRef("ab" * 32, 123)})
    await backends.store.append(hooked.run_id, [forged])
    await backends.broker.publish_activation(Activation(run_id=hooked.run_id, reason="hook"))
    with pytest.raises(lf.WorkflowFailedError, match="holds no blob"):
        await hooked.result(timeout=30)
