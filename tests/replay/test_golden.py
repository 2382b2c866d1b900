"""The committed golden histories replay against today's code; edited code diverges where it should.

If a test here fails after a change to an example workflow, runs recorded by the
old code would break when the new code is deployed while they are in flight.
Re-record (``python -m tests.replay.record``) only if that is acceptable.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from ledgerflow.eventlog.errors import ReplayDivergenceError
from ledgerflow.eventlog.events import RUN_TERMINAL, Event, EventType
from ledgerflow.scheduler.history import History, dump_history

import ledgerflow as lf
from examples.orders import Receipt, process_order
from ledgerflow import testing

from . import edited, record

HERE = Path(__file__).resolve().parent
GOLDENS = sorted(HERE.glob("*.jsonl"))
OK = HERE / "orders_ok.jsonl"
UNKNOWN_ITEM = HERE / "orders_unknown_item.jsonl"


def diverges(history: Any, workflow: Any, **kwargs: Any) -> ReplayDivergenceError:
    with pytest.raises(ReplayDivergenceError) as caught:
        testing.replay(history, workflow, **kwargs)
    return caught.value


# --- the goldens --------------------------------------------------------------------------


def test_every_recorded_golden_is_committed() -> None:
    assert sorted(p.name for p in GOLDENS) == sorted(f"{g.name}.jsonl" for g in record.GOLDENS)


@pytest.mark.parametrize("path", GOLDENS, ids=lambda p: p.stem)
def test_golden_replays_against_todays_code(path: Path) -> None:
    history = testing.load_history(path)
    assert history.workflow == "process_order"
    result = testing.replay(history, process_order)
    assert result.finished
    assert result.events == len(history) > 5
    assert result.run_id == history.run_id
    assert result.pending == ()


def test_the_completed_golden_ends_with_its_receipt() -> None:
    result = testing.replay(OK, "process_order")
    assert isinstance(result.outcome, testing.Completed)
    receipt = result.outcome.result
    assert isinstance(receipt, Receipt)
    assert (receipt.order_id, receipt.total) == ("order-1", Decimal("1.25"))
    assert "consistent; completed with Receipt(order_id='order-1'" in result.summary()


def test_the_failed_golden_fails_on_the_unknown_item() -> None:
    result = testing.replay(UNKNOWN_ITEM, process_order.definition)
    assert isinstance(result.outcome, testing.Failed)
    error = result.outcome.error
    assert isinstance(error, lf.StepFailedError)
    assert error.type_name == "eventlog.errors.FatalError"
    assert "no such item: kiwi" in error.message


def test_goldens_round_trip_byte_for_byte(tmp_path: Path) -> None:
    for path in GOLDENS:
        copy = tmp_path / path.name
        dump_history(testing.load_history(path), copy)
        assert copy.read_text() == path.read_text()


async def test_the_recorder_still_records_replayable_histories(tmp_path: Path) -> None:
    for golden in record.GOLDENS:
        written = await record.record(golden, tmp_path)
        result = testing.replay(written, golden.workflow)
        assert result.finished
        assert testing.load_history(written).run_id == golden.run_id


def test_every_unfinished_prefix_of_a_golden_is_consistent() -> None:
    """A run still in flight replays fine, and says what it would ask for next."""
    history = testing.load_history(OK)
    pendings = []
    for cut in range(1, len(history)):
        prefix = history[:cut]
        assert not any(e.type in RUN_TERMINAL for e in prefix)
        result = testing.replay(prefix, process_order, run_id=history.run_id)
        assert not result.finished
        # Only the whole log but its run_completed lets the code finish.
        assert (result.outcome is None) == (cut < len(history) - 1)
        pendings.append(result.pending)
    assert ("s1 step 'reserve_stock'", "s2 step 'reserve_stock'", "s3 step 'check_customer'") in (
        pendings
    )
    assert ("s6 step 'notify'",) in pendings


# --- edited code against the goldens -------------------------------------------------------


def test_steps_in_another_order_diverge_at_the_first_swapped_position() -> None:
    error = diverges(OK, edited.ship_before_charge)
    assert error.position == "s4"
    assert "the log recorded step 'charge', the code now does step 'ship'" in str(error)


def test_a_moved_step_diverges_at_s5() -> None:
    error = diverges(OK, edited.notify_before_ship)
    assert error.position == "s5"
    assert "diverged at s5: the log recorded step 'ship', the code now does step 'notify'" in (
        str(error)
    )


def test_a_removed_step_diverges_where_the_log_recorded_it() -> None:
    error = diverges(OK, edited.without_notify)
    assert error.position == "s6"
    assert "the log recorded step 'notify'" in str(error)
    assert "nothing there" in str(error)


def test_a_step_added_after_a_finished_run_diverges_at_the_new_position() -> None:
    error = diverges(OK, edited.with_audit)
    assert error.position == "s7"
    assert "the log recorded nothing there (the run ended with run_completed)" in str(error)
    assert "the code now does step 'golden_audit'" in str(error)


def test_an_edit_is_only_seen_once_the_log_reaches_it() -> None:
    """An in-flight run that has not reached the edited position yet is still fine."""
    history = testing.load_history(OK)
    s4 = next(i for i, e in enumerate(history) if e.corr == "s4")
    prefix = history[:s4]
    result = testing.replay(prefix, edited.ship_before_charge, run_id=history.run_id)
    assert result.pending == ("s4 step 'ship'",)
    assert diverges(history, edited.ship_before_charge).position == "s4"


def test_another_result_diverges_at_the_end() -> None:
    error = diverges(OK, edited.with_shipping_fee)
    assert error.position == "end"
    assert "the log recorded run_completed with result Receipt(" in str(error)
    assert "total=Decimal('6.24')" in str(error)


def test_catching_the_recorded_failure_diverges_at_the_end() -> None:
    error = diverges(UNKNOWN_ITEM, edited.forgiving)
    assert error.position == "end"
    assert "the log recorded run_failed with eventlog.errors.StepFailedError" in str(error)
    assert "the code now does complete with result 'skipped: no such item: kiwi'" in str(error)


def test_a_new_required_argument_diverges_at_the_start() -> None:
    error = diverges(OK, edited.with_coupon)
    assert error.position == "start"
    assert "arguments ('order-1', ['apple', 'pear'])" in str(error)
    assert "coupon" in str(error)


# --- how the end of the log is judged ----------------------------------------------------


def _cut_before_charge_then(terminal: EventType, data: dict[str, Any]) -> History:
    """The OK golden up to the reservations' results, then a terminal event."""
    history = testing.load_history(OK)
    kept = History(history[:11], run_id=history.run_id, workflow=history.workflow)
    assert kept[-1].type is EventType.STEP_COMPLETED and kept[-1].corr == "s1"
    last = kept[-1]
    kept.append(Event(id=f"{last.ts + 1}-0", type=terminal, corr="", data=data, ts=last.ts + 1))
    return kept


def test_a_cancelled_run_may_stop_short_of_what_the_code_asks_next() -> None:
    history = _cut_before_charge_then(EventType.RUN_CANCELLED, {"reason": "test"})
    result = testing.replay(history, process_order)
    assert result.finished
    assert result.pending == ("s4 step 'charge'",)


def test_a_completed_run_may_not() -> None:
    history = _cut_before_charge_then(EventType.RUN_COMPLETED, {"result": None})
    error = diverges(history, process_order)
    assert error.position == "s4"
    assert "the code now does step 'charge'" in str(error)


def test_the_run_id_seeds_the_deterministic_helpers() -> None:
    """Why histories carry their run id: lf.uuid4() under another id is another value."""
    history = testing.load_history(OK)
    events = list(history)
    with pytest.raises(testing.HistoryError, match="run_id="):
        testing.replay(events, process_order)
    assert testing.replay(events, process_order, run_id="another").finished
