"""Every recorded error text is bounded, whatever the exception holds (issue 11, item 5)."""

from __future__ import annotations

import pytest
from ledgerflow.eventlog.text import MAX_MESSAGE, MAX_NAME, clip
from ledgerflow.worker.outcome import MAX_TRACEBACK, bounded_error, error_info


@pytest.mark.parametrize("size", [0, 1, 79, 80, 81, 4000, 4001, 10_000, 1_000_000])
@pytest.mark.parametrize("limit", [80, 100, 4000])
def test_clip_never_exceeds_its_limit_and_keeps_both_ends(size: int, limit: int) -> None:
    text = "<" + "m" * max(0, size - 2) + ">" if size >= 2 else "x" * size
    clipped = clip(text, limit)
    assert len(clipped) <= limit
    if size <= limit:
        assert clipped == text
    else:
        assert clipped.startswith("<") and clipped.endswith(">")
        cut = size - (len(clipped) - len(clipped.split("\n")[1]) - 2)
        assert f"[... {cut} of {size} characters cut ...]" in clipped


def raise_chain(size: int) -> None:
    try:
        raise KeyError("k" * size)
    except KeyError as exc:
        raise ValueError("v" * size) from exc


def test_error_info_bounds_message_traceback_and_its_copy_of_the_message() -> None:
    with pytest.raises(ValueError) as caught:
        raise_chain(8 * 1024 * 1024)
    info = error_info(caught.value)
    assert info["type"] == "ValueError"
    assert len(info["message"]) <= MAX_MESSAGE
    assert len(info["traceback"]) <= MAX_TRACEBACK
    assert "raise_chain" in info["traceback"]  # frames survive, the messages are cut
    assert "characters cut" in info["traceback"]


def test_error_info_survives_a_str_that_raises_and_a_huge_type_name() -> None:
    class Broken(Exception):
        def __str__(self) -> str:
            raise RuntimeError("no")

    Broken.__qualname__ = "B" * 100_000
    info = error_info(Broken())
    assert "unprintable" in info["message"]
    assert len(info["type"]) <= MAX_NAME
    assert len(info["traceback"]) <= MAX_TRACEBACK


def test_bounded_error_normalizes_what_a_log_holds() -> None:
    assert bounded_error(None)["message"] == "None"
    huge = bounded_error({"type": "T" * 10_000, "message": "m" * 10_000, "traceback": 5})
    assert len(huge["type"]) <= MAX_NAME and len(huge["message"]) <= MAX_MESSAGE
    assert huge["traceback"] == "5"
