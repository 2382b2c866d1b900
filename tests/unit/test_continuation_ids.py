"""Continuation run ids: deterministic, within the run-id rule, short however long the chain."""

from __future__ import annotations

from ledgerflow.eventlog.names import MAX_RUN_ID, check_run_id
from ledgerflow.scheduler.continuation import continuation_run_id


def test_a_chain_counts_its_links_on_the_first_runs_id() -> None:
    assert continuation_run_id("order-7") == "order-7:c1"
    assert continuation_run_id("order-7:c1") == "order-7:c2"
    assert continuation_run_id("order-7:c99") == "order-7:c100"
    assert continuation_run_id("parent.s3") == "parent.s3:c1"


def test_the_same_id_always_continues_as_the_same_id() -> None:
    assert continuation_run_id("abc:c4") == continuation_run_id("abc:c4")


def test_an_id_too_long_to_extend_gets_a_digest_root_and_stays_valid() -> None:
    long_id = "x" * MAX_RUN_ID
    first = continuation_run_id(long_id)
    assert len(first) <= MAX_RUN_ID and first.endswith(":c1")
    assert check_run_id(first) == first
    assert continuation_run_id(long_id) == first
    assert continuation_run_id(first) == first[: -len(":c1")] + ":c2"


def test_a_link_number_that_is_not_a_plain_count_starts_a_new_suffix() -> None:
    assert continuation_run_id("run:c0") == "run:c0:c1"
    assert continuation_run_id("run:c01") == "run:c01:c1"
