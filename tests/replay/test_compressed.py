"""gzip-compressed histories (what ``runs archive`` writes) load and replay like plain ones."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest
from ledgerflow.scheduler.history import compress_history, format_history, loads_history

from examples.orders import process_order
from ledgerflow import testing

HERE = Path(__file__).resolve().parent
OK = HERE / "orders_ok.jsonl"


def test_a_gzip_file_loads_to_the_same_history_whatever_its_name(tmp_path: Path) -> None:
    plain = testing.load_history(OK)
    packed = tmp_path / "run.jsonl.gz"
    packed.write_bytes(gzip.compress(OK.read_bytes()))
    renamed = tmp_path / "renamed.jsonl"  # recognised by its magic bytes, not its suffix
    renamed.write_bytes(packed.read_bytes())
    for path in (packed, renamed):
        loaded = testing.load_history(path)
        assert list(loaded) == list(plain)
        assert (loaded.run_id, loaded.workflow) == (plain.run_id, plain.workflow)
    assert testing.replay(packed, process_order).finished


def test_dumping_to_a_gz_path_compresses_the_same_lines(tmp_path: Path) -> None:
    history = testing.load_history(OK)
    target = tmp_path / "out.jsonl.gz"
    assert testing.dump_history(history, target) == len(history)
    raw = target.read_bytes()
    assert raw[:2] == b"\x1f\x8b"
    assert gzip.decompress(raw).decode() == format_history(history)
    assert list(testing.load_history(target)) == list(history)


def test_compression_is_deterministic() -> None:
    text = format_history(testing.load_history(OK))
    assert compress_history(text) == compress_history(text)
    assert list(loads_history(compress_history(text))) == list(testing.load_history(OK))


@pytest.mark.parametrize("cut", [10, 100, -8])
def test_a_truncated_gzip_file_is_a_format_error(tmp_path: Path, cut: int) -> None:
    data = gzip.compress(OK.read_bytes())
    bad = tmp_path / "cut.jsonl.gz"
    bad.write_bytes(data[:cut])
    with pytest.raises(testing.HistoryFormatError, match="not a readable gzip file"):
        testing.load_history(bad)


def test_non_utf8_bytes_are_a_format_error() -> None:
    with pytest.raises(testing.HistoryFormatError, match="not UTF-8"):
        loads_history(b"\xff\xfe{}", name="x.jsonl")
