"""``ledgerflow runs archive`` on the real servers: write, sync, then remove; refuse otherwise."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from ledgerflow.eventlog import codec
from ledgerflow.eventlog.errors import RunNotFoundError
from ledgerflow.eventlog.names import Names
from ledgerflow.scheduler.archive import ArchiveOutcome, Archiver, read_archive

from ledgerflow import testing
from ledgerflow.ops.archive import ArchiveSink, DirectorySink, archive_name
from tests.apps.arith import expected_total, failing, total
from tests.apps.waiting import approval
from tests.archive.conftest import make_bucket
from tests.processes import cli
from tests.servers import Servers


async def lf(servers: Servers, namespace: str, *args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(cli, servers, namespace, *args)


async def _completed(client: Any, n: int = 3) -> str:
    run = await client.start(total, n)
    assert await run.result(timeout=10) == expected_total(n)
    run_id: str = run.run_id
    return run_id


async def _failed(client: Any) -> str:
    run = await client.start(failing, "archived failure")
    with pytest.raises(Exception, match="archived failure"):
        await run.result(timeout=10)
    run_id: str = run.run_id
    return run_id


async def _gone(client: Any, run_id: str) -> None:
    assert await client.events(run_id) == []
    assert await client.store.status(run_id) == {}
    with pytest.raises(RunNotFoundError):
        await client.result(run_id, timeout=1)


async def test_archive_completed_and_failed_runs_then_read_them_back(
    running: Any, servers: Servers, namespace: str, tmp_path: Path
) -> None:
    done, broke = await _completed(running), await _failed(running)
    events = {run_id: await running.events(run_id) for run_id in (done, broke)}
    out = tmp_path / "archive"
    archived = await lf(servers, namespace, "runs", "archive", done, broke, "--to", str(out))
    assert archived.returncode == 0, archived.stderr
    assert f"{done}: archived {len(events[done])} events" in archived.stdout
    assert f"archived 2 of 2 runs to {out}" in archived.stdout
    assert sorted(p.name for p in out.iterdir()) == sorted(archive_name(r) for r in (done, broke))
    for run_id in (done, broke):
        await _gone(running, run_id)
        shown = await lf(servers, namespace, "runs", "show", run_id)
        assert shown.returncode == 4, shown.stderr

    done_file, broke_file = out / archive_name(done), out / archive_name(broke)
    assert done_file.read_bytes()[:2] == b"\x1f\x8b"
    history = testing.load_history(done_file)
    assert (history.run_id, list(history)) == (done, events[done])
    assert list(testing.load_history(broke_file)) == events[broke]
    assert testing.replay(done_file, total).finished
    assert testing.replay(broke_file, failing).finished
    replayed = await lf(servers, namespace, "replay", str(done_file), "tests.apps.arith:total")
    assert replayed.returncode == 0, replayed.stderr
    assert "consistent; completed with 6" in replayed.stdout

    shown = await lf(servers, namespace, "runs", "show", "--archive", str(done_file))
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith(f"run {done}  workflow it_total  status completed")
    assert "run_completed" in shown.stdout and "result: 6" in shown.stdout
    shown = await lf(servers, namespace, "runs", "show", "--archive", str(broke_file), "--json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)[-1]["event"] == "run_failed"
    both = await lf(servers, namespace, "runs", "show", done, "--archive", str(done_file))
    assert both.returncode == 2


async def test_archive_selects_finished_runs_by_status_and_age(
    running: Any, servers: Servers, namespace: str, tmp_path: Path
) -> None:
    done, broke = await _completed(running), await _failed(running)
    out = str(tmp_path)
    older = await lf(servers, namespace, "runs", "archive", "--before", "1h", "--to", out)
    assert older.returncode == 0, older.stderr
    assert "no finished run matches" in older.stdout
    only_failed = await lf(
        servers, namespace, "runs", "archive", "--status", "failed", "--to", out, "--json"
    )
    assert only_failed.returncode == 0, only_failed.stderr
    report = json.loads(only_failed.stdout)
    assert [a["run_id"] for a in report["archived"]] == [broke]
    assert report["failed"] is None and report["moved"] == report["live"] == []
    await _gone(running, broke)
    assert (await running.state(done)).status == "completed"
    rest = await lf(servers, namespace, "runs", "archive", "--to", out, "--json")
    assert [a["run_id"] for a in json.loads(rest.stdout)["archived"]] == [done]
    await _gone(running, done)


async def test_a_live_run_is_refused_and_left_alone(
    running: Any, servers: Servers, namespace: str, tmp_path: Path
) -> None:
    run = await running.start(approval, "archive-live")
    for _ in range(200):
        if any(e.type.value == "hook_created" for e in await run.events()):
            break
        await asyncio.sleep(0.02)
    refused = await lf(servers, namespace, "runs", "archive", run.run_id, "--to", str(tmp_path))
    assert refused.returncode == 1
    assert f"{run.run_id}: not finished, left in place" in refused.stderr
    assert await asyncio.to_thread(os.listdir, tmp_path) == []
    assert (await run.state()).status == "started"
    await running.cancel(run.run_id)


class _Interfering:
    """A sink that lets something change the run while its archive is being written."""

    def __init__(self, inner: ArchiveSink, during: Any) -> None:
        self.inner, self.during = inner, during
        self.where = inner.where

    async def put(self, name: str, data: bytes) -> None:
        await self.during()
        await self.inner.put(name, data)

    async def get(self, name: str) -> bytes:
        return await self.inner.get(name)

    async def list(self, prefix: str = "") -> list[str]:
        return await self.inner.list(prefix)


async def test_a_run_that_moved_after_it_was_read_is_not_removed(
    running: Any, backends: Any, redis_client: aioredis.Redis, names: Names, tmp_path: Path
) -> None:
    run_id = await _completed(running)
    before = await running.events(run_id)

    async def append_behind_its_back() -> None:
        # Only a raw writer can touch a finished run's stream: the append refuses to.
        entry = {"type": "run_cancelled", "corr": "", "ts": "1", "data": codec.encode(None)}
        await redis_client.xadd(names.stream(run_id), entry)

    sink = _Interfering(DirectorySink(tmp_path), append_behind_its_back)
    result = await Archiver(backends.store, sink).archive(run_id)
    assert result.outcome is ArchiveOutcome.MOVED
    assert await redis_client.xlen(names.stream(run_id)) == len(before) + 1
    assert await asyncio.to_thread(os.listdir, tmp_path) == [archive_name(run_id)]
    assert (await backends.store.status(run_id))["run"] == "completed"


async def test_an_interrupted_write_leaves_the_run_in_place(
    running: Any, backends: Any, servers: Servers, namespace: str, tmp_path: Path
) -> None:
    run_id = await _completed(running)
    events = await running.events(run_id)

    async def fail() -> None:
        raise OSError(28, "No space left on device")

    sink = _Interfering(DirectorySink(tmp_path), fail)
    with pytest.raises(OSError, match="No space left"):
        await Archiver(backends.store, sink).archive(run_id)
    assert await running.events(run_id) == events
    assert await asyncio.to_thread(os.listdir, tmp_path) == []

    blocked = tmp_path / "a-file"
    blocked.write_text("not a directory")
    failed = await lf(servers, namespace, "runs", "archive", run_id, "--to", str(blocked / "x"))
    assert failed.returncode == 1
    assert f"{run_id}: archive not written, run left in place" in failed.stderr
    assert await running.events(run_id) == events


async def test_archive_to_s3_and_show_from_it(
    running: Any, servers: Servers, namespace: str, s3_env: str
) -> None:
    run_id = await _completed(running)
    make_bucket(f"lf-{namespace}".lower()[:60])
    target = f"s3://lf-{namespace}".lower()[:65] + "/archives/2026"
    env = await lf(servers, namespace, "runs", "archive", run_id, "--to", target)
    assert env.returncode == 0, env.stderr
    assert "testing-secret-key" not in env.stdout + env.stderr
    await _gone(running, run_id)
    history = await read_archive(f"{target}/{archive_name(run_id)}")
    assert history.run_id == run_id
    shown = await lf(
        servers, namespace, "runs", "show", "--archive", f"{target}/{archive_name(run_id)}"
    )
    assert shown.returncode == 0, shown.stderr
    assert "status completed" in shown.stdout


async def test_a_run_holding_an_unknown_class_is_copied_exactly_or_not_at_all(
    backends: Any, servers: Servers, namespace: str, tmp_path: Path
) -> None:
    from ledgerflow.eventlog.events import EventType, NewEvent

    from tests.archive.appdata import Parcel

    codec.allow_modules("tests.archive.appdata")
    run_id = f"parcel-{namespace}"
    result = Parcel(3, ("fragile",))
    created = {"workflow": "ship", "args": [], "kwargs": {}}
    await backends.store.append(
        run_id,
        [
            NewEvent.of(EventType.RUN_CREATED, "", created, workflow="ship"),
            NewEvent.of(EventType.RUN_STARTED, "", None),
            NewEvent.of(EventType.RUN_COMPLETED, "", {"result": result}),
        ],
    )
    before = await backends.store.read(run_id)
    refused = await lf(servers, namespace, "runs", "archive", run_id, "--to", str(tmp_path))
    assert refused.returncode == 1
    assert f"{run_id}: cannot be decoded exactly here, left in place" in refused.stderr
    assert "tests.archive.appdata.Parcel" in refused.stderr
    assert await asyncio.to_thread(os.listdir, tmp_path) == []
    assert await backends.store.read(run_id) == before

    args = ("runs", "archive", run_id, "--to", str(tmp_path), "--app", "tests.archive.appdata")
    archived = await lf(servers, namespace, *args)
    assert archived.returncode == 0, archived.stderr
    history = testing.load_history(tmp_path / archive_name(run_id))
    assert list(history) == before
    assert history[-1].data == {"result": result}
    assert await backends.store.read(run_id) == []


async def test_retention_archives_instead_of_deleting(
    running: Any, backends: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reconciler's options as parsed, the disposer they give, the janitor using it."""
    from ledgerflow.scheduler.janitor import Janitor

    from ledgerflow.cli import build_parser
    from ledgerflow.cli.archive import retention_disposer

    done = await _completed(running)
    events = await running.events(done)
    live = await running.start(approval, "retention-archive-live")
    monkeypatch.setenv("LEDGERFLOW_RETENTION_ARCHIVE", str(tmp_path / "from-env"))
    from_env = build_parser().parse_args(["reconciler"])
    assert from_env.retention_archive == str(tmp_path / "from-env")
    args = build_parser().parse_args(["reconciler", "--retention-archive", str(tmp_path)])
    dispose = retention_disposer(args, backends.store)
    assert dispose is not None
    assert retention_disposer(build_parser().parse_args(["reconciler"]), backends.store) is not None
    monkeypatch.delenv("LEDGERFLOW_RETENTION_ARCHIVE")
    assert retention_disposer(build_parser().parse_args(["reconciler"]), backends.store) is None

    await asyncio.sleep(0.05)
    janitor = Janitor(backends.store, default_retention_ms=1, dispose=dispose, observers=[])
    report = await janitor.sweep()
    assert report.removed == 1
    await _gone(running, done)
    assert list(testing.load_history(tmp_path / archive_name(done))) == events
    assert testing.replay(tmp_path / archive_name(done), total).finished
    assert await backends.store.exists(live.run_id)
    await running.cancel(live.run_id)
