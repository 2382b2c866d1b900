"""The presence mark's format: the runs a worker holds, bounded, read as hostile bytes."""

from __future__ import annotations

import pytest
from ledgerflow.eventlog.presence import MAX_LISTED_RUNS, PLAIN, decode_mark, encode_mark


def test_a_listed_mark_reads_back_as_its_runs() -> None:
    runs = {"run-1", "a:b.c_d-e", "x" * 200}
    assert decode_mark(encode_mark(runs)) == frozenset(runs)
    assert decode_mark(encode_mark(set())) == frozenset()
    assert decode_mark(encode_mark(set()).decode()) == frozenset()  # a str reply too


def test_unknown_or_too_many_runs_make_the_plain_mark() -> None:
    assert encode_mark(None) == PLAIN
    assert encode_mark({f"r{i}" for i in range(MAX_LISTED_RUNS + 1)}) == PLAIN
    listed = {f"r{i}" for i in range(MAX_LISTED_RUNS)}
    assert decode_mark(encode_mark(listed)) == frozenset(listed)


@pytest.mark.parametrize(
    "raw",
    [
        PLAIN,
        b"",
        b"runs",
        b"runs\nbad run",
        b"runs\nok\n",  # an empty name
        b"runs\n\xff\xfe",
        b"runs\n" + b"x" * 201,
        b"runs\n" + b"\n".join(b"r%d" % i for i in range(MAX_LISTED_RUNS + 1)),
        b"runs\n" + b"r" * 300_000,
    ],
)
def test_anything_but_a_valid_list_reads_as_the_plain_mark(raw: bytes) -> None:
    assert decode_mark(raw) is None
