"""The golden history of a run that continued as new replays against today's code.

Kept apart from the orders goldens (``tests/replay/chains/``): those are the
memory of logs written before call fingerprints and chains existed.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from ledgerflow.eventlog.errors import ReplayDivergenceError
from ledgerflow.eventlog.events import Event
from ledgerflow.eventlog.records import RunCompleted
from ledgerflow.scheduler.history import History, dump_history

from ledgerflow import testing
from tests.apps import chains

from . import record

CONTINUED = record.CHAINS / "poller_continued.jsonl"


def test_every_recorded_chain_golden_is_committed() -> None:
    committed = sorted(p.name for p in record.CHAINS.glob("*.jsonl"))
    assert committed == sorted(f"{g.name}.jsonl" for g in record.CHAIN_GOLDENS)


def test_the_continued_golden_replays_and_ends_by_naming_its_successor() -> None:
    history = testing.load_history(CONTINUED)
    end = history[-1].record
    assert isinstance(end, RunCompleted) and end.continued_as == "golden-poller:c1"
    result = testing.replay(history, chains.poller)
    assert result.finished and result.pending == ()
    assert isinstance(result.outcome, testing.Continued)
    assert result.outcome.run_id == "golden-poller:c1"
    assert (result.outcome.args, result.outcome.kwargs) == ([5, 2], {"done": 2})
    assert "continued as new run golden-poller:c1" in result.summary()


def test_continuing_elsewhere_than_the_log_says_diverges_at_the_end() -> None:
    history = testing.load_history(CONTINUED)
    end = history[-1]
    data = {"result": None, "continued_as": "elsewhere"}
    moved = Event(id=end.id, type=end.type, corr="", data=data, ts=end.ts)
    with pytest.raises(ReplayDivergenceError) as caught:
        testing.replay(History([*history[:-1], moved], run_id=history.run_id), chains.poller)
    assert caught.value.position == "end"
    assert "continued as new run elsewhere" in str(caught.value)


def test_the_chain_golden_round_trips_byte_for_byte(tmp_path: Path) -> None:
    copy = tmp_path / CONTINUED.name
    dump_history(testing.load_history(CONTINUED), copy)
    assert copy.read_text() == CONTINUED.read_text()


async def test_the_recorder_still_records_a_replayable_chain(tmp_path: Path) -> None:
    for golden in record.CHAIN_GOLDENS:
        written = await record.record(golden, tmp_path)
        result = testing.replay(written, golden.workflow)
        assert result.finished and isinstance(result.outcome, testing.Continued)
