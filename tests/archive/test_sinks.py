"""Archive sinks: a directory (fsync, atomic rename) and S3 against a real local S3 server."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from ledgerflow.eventlog.errors import ConfigurationError

from ledgerflow.ops.archive import ArchiveError, ArchiveSink, DirectorySink, open_sink
from tests.archive.conftest import make_bucket


async def _round_trip(sink: ArchiveSink) -> None:
    assert await sink.list() == []
    await sink.put("run-1.jsonl.gz", b"one")
    await sink.put("run-2.jsonl.gz", b"two")
    await sink.put("run-1.jsonl.gz", b"ONE")  # replaced whole
    assert await sink.get("run-1.jsonl.gz") == b"ONE"
    assert await sink.list() == ["run-1.jsonl.gz", "run-2.jsonl.gz"]
    assert await sink.list("run-2") == ["run-2.jsonl.gz"]
    with pytest.raises(ArchiveError, match=r"no archive 'nope\.jsonl\.gz'"):
        await sink.get("nope.jsonl.gz")
    for bad in ("../escape", ".hidden", "a/b", ""):
        with pytest.raises(ArchiveError, match="invalid archive name"):
            await sink.put(bad, b"x")


async def test_directory_sink_round_trips_and_creates_its_directory(tmp_path: Path) -> None:
    sink = DirectorySink(tmp_path / "new" / "dir")
    await _round_trip(sink)
    assert sorted(os.listdir(tmp_path / "new" / "dir")) == ["run-1.jsonl.gz", "run-2.jsonl.gz"]


async def test_directory_sink_syncs_file_and_directory_before_returning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    await DirectorySink(tmp_path).put("r.jsonl.gz", b"data")
    assert len(synced) == 2
    assert Path(synced[0]).parent == tmp_path and Path(synced[0]).name.startswith(".r.jsonl.gz.")
    assert synced[1] == str(tmp_path)


async def test_a_failed_write_leaves_no_file_under_either_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sink = DirectorySink(tmp_path)
    await sink.put("r.jsonl.gz", b"old")

    def broken(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", broken)
    with pytest.raises(OSError, match="Input/output error"):
        await sink.put("r.jsonl.gz", b"new")
    assert os.listdir(tmp_path) == ["r.jsonl.gz"]
    assert (tmp_path / "r.jsonl.gz").read_bytes() == b"old"


def test_open_sink_chooses_by_target(tmp_path: Path) -> None:
    assert isinstance(open_sink(str(tmp_path)), DirectorySink)
    s3 = open_sink("s3://bucket/some/prefix/")
    assert s3.where.startswith("s3://bucket/some/prefix")
    for bad in ("", "s3://", "s3:///prefix"):
        with pytest.raises(ConfigurationError):
            open_sink(bad)


# --- S3, against moto's S3-compatible server on loopback (tests/archive/conftest.py) ----


async def test_s3_sink_round_trips_under_its_prefix(s3_env: str) -> None:
    make_bucket("archives")
    sink = open_sink("s3://archives/prod/runs")
    assert sink.where == f"s3://archives/prod/runs at {s3_env}"
    await _round_trip(sink)
    other = open_sink("s3://archives/staging")
    assert await other.list() == []


async def test_s3_errors_name_the_place_never_the_secret(s3_env: str) -> None:
    sink = open_sink("s3://no-such-bucket/x")
    with pytest.raises(ArchiveError) as caught:
        await sink.put("r.jsonl.gz", b"data")
    text = str(caught.value)
    assert "s3://no-such-bucket/x" in text and "put x/r.jsonl.gz" in text
    assert "testing-secret-key" not in text and "testing-key-id" not in text
