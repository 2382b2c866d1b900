"""The history file format: exact round trips for every event type, clear errors for bad files."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import io
import json
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgpack
import pytest
from ledgerflow.eventlog.errors import LedgerflowError
from ledgerflow.eventlog.events import Event, EventType
from ledgerflow.scheduler.history import json_view

import ledgerflow as lf
from examples.orders import Receipt
from ledgerflow import testing

HERE = Path(__file__).resolve().parent
OK = HERE / "orders_ok.jsonl"

RICH: dict[str, Any] = {
    "decimal": Decimal("12.30"),
    "uuid": uuid.UUID("12345678-1234-5678-1234-567812345678"),
    "when": dt.datetime(2024, 5, 1, 12, 30, tzinfo=dt.UTC),
    "day": dt.date(2024, 5, 1),
    "time": dt.time(7, 5),
    "delta": dt.timedelta(days=1, seconds=3),
    "tuple": (1, "two", None),
    "set": {3, 1, 2},
    "frozen": frozenset({"a"}),
    "bytes": b"\x00\xffok",
    "nested": {1: [1.5, True], "k": {"deep": ()}},
    "receipt": Receipt("o-1", Decimal("1.25"), "ch_1", "T-1"),
}


def rich_events() -> list[Event]:
    """One event of every type the log knows, each carrying data of every rich kind."""
    return [
        Event(
            id=f"1700000000000-{i}",
            type=kind,
            corr="" if kind.kind == "run" else f"s{i}",
            data={"workflow": "w", "args": [], "kwargs": {}} if i == 0 else {**RICH, "i": i},
            ts=1700000000000 + i,
        )
        for i, kind in enumerate(
            [EventType.RUN_CREATED, *(k for k in EventType if k.value != "run_created")]
        )
    ]


def dumped(events: list[Event], run_id: str = "r-1") -> str:
    out = io.StringIO()
    testing.dump_history(events, out, run_id=run_id)
    return out.getvalue()


def test_every_event_type_round_trips_exactly() -> None:
    events = rich_events()
    assert {e.type for e in events} == set(EventType)
    loaded = testing.load_history(io.StringIO(dumped(events)))
    assert list(loaded) == events
    assert loaded.run_id == "r-1"
    assert loaded.workflow == "w"
    assert isinstance(loaded[1].data["tuple"], tuple)
    assert isinstance(loaded[1].data["receipt"], Receipt)


def test_the_file_is_one_json_object_a_line_with_a_readable_view() -> None:
    lines = [json.loads(line) for line in dumped(rich_events()).splitlines()]
    assert lines[0] == {
        "ledgerflow_history": 1,
        "run_id": "r-1",
        "workflow": "w",
        "events": len(EventType),
    }
    view = lines[2]["data"]
    assert set(lines[2]) == {"id", "type", "corr", "ts", "v", "data", "msgpack"}
    assert view["decimal"] == "12.30"
    assert view["uuid"] == "12345678-1234-5678-1234-567812345678"
    assert view["when"] == "2024-05-01T12:30:00+00:00"
    assert view["bytes"] == "00ff6f6b"
    assert view["set"] == [1, 2, 3]
    assert view["nested"] == {"1": [1.5, True], "k": {"deep": []}}
    assert view["receipt"] == {
        "__type__": "examples.orders.Receipt",
        "order_id": "o-1",
        "total": "1.25",
        "charge_id": "ch_1",
        "tracking": "T-1",
    }


def test_json_view_never_fails() -> None:
    weird = {(1, 2): float("nan"), "x": msgpack.ExtType(42, b"\x01"), "o": object()}
    view = json_view(weird)
    json.dumps(view, allow_nan=False)
    assert view["[1, 2]"] == "nan"
    assert view["x"] == {"__ext__": 42, "hex": "01"}


def test_loading_reads_msgpack_not_the_view() -> None:
    lines = dumped(rich_events()).splitlines()
    edited = json.loads(lines[2])
    edited["data"] = "anything"
    lines[2] = json.dumps(edited)
    loaded = testing.load_history(io.StringIO("\n".join(lines) + "\n\n"))
    assert loaded[1].data["decimal"] == Decimal("12.30")


def test_a_history_without_header_loads_but_needs_a_run_id_to_replay() -> None:
    body = "".join(OK.read_text().splitlines(keepends=True)[1:])
    loaded = testing.load_history(io.StringIO(body))
    assert loaded.run_id is None
    with pytest.raises(testing.HistoryError, match="run_id="):
        testing.replay(loaded, "process_order")
    assert testing.replay(loaded, "process_order", run_id="golden-orders-ok").finished


def test_dumping_needs_a_run_id() -> None:
    with pytest.raises(testing.HistoryError, match="run_id="):
        testing.dump_history(rich_events(), io.StringIO())


def _line(**fields: Any) -> str:
    event = {"id": "1-0", "type": "run_started", "corr": "", "ts": 1, "v": 1, "data": {}}
    event["msgpack"] = base64.b64encode(msgpack.packb({})).decode()
    event.update(fields)
    return json.dumps({k: v for k, v in event.items() if v is not ...})


HEADER = json.dumps({"ledgerflow_history": 1, "run_id": "r", "workflow": "w", "events": 2})
CREATED = _line(
    type="run_created",
    msgpack=base64.b64encode(msgpack.packb({"workflow": "w", "args": [], "kwargs": {}})).decode(),
)
UNKNOWN_CLASS = base64.b64encode(
    msgpack.packb({"x": msgpack.ExtType(8, msgpack.packb(["nowhere.Thing", {}]))})
).decode()


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        (f"{HEADER}\n{CREATED}\n{{not json\n", 3, "line 3: not valid JSON"),
        (f"{HEADER}\n{CREATED}\n[1, 2]\n", 3, "line 3: expected a JSON object"),
        (f"{HEADER}\n{CREATED}\n{_line(msgpack=...)}\n", 3, "line 3: the event has no 'msgpack'"),
        (f"{HEADER}\n{CREATED}\n{_line(msgpack='@@@')}\n", 3, "line 3: 'msgpack' is not base64"),
        (f"{HEADER}\n{CREATED}\n{_line(ts='soon')}\n", 3, "line 3: the event's 'ts' must be"),
        (f"{HEADER}\n{CREATED}\n{_line(ts=True)}\n", 3, "line 3: the event's 'ts' must be"),
        (f"{HEADER}\n{CREATED}\n{_line(type='run_paused')}\n", 3, "unknown event type"),
        (f"{HEADER}\n\n{CREATED}\n{HEADER}\n", 4, "line 4: a history header may only be"),
        (HEADER.replace(": 1,", ": 2,", 1) + "\n", 1, "line 1: history format version 2"),
        (HEADER.replace('"r"', '""') + "\n", 1, "line 1: the header has no run_id"),
        (f"{HEADER}\n{CREATED}\n", None, "the header says 2 events but the file holds 1"),
        ("\n\n", None, "holds no events"),
        (f"{CREATED}\n{_line(msgpack=UNKNOWN_CLASS)}\n", 2, "'nowhere.Thing'"),
    ],
)
def test_malformed_files_say_which_line(text: str, line: int | None, message: str) -> None:
    source = io.StringIO(text)
    source.name = "run.jsonl"
    with pytest.raises(testing.HistoryFormatError) as caught:
        testing.load_history(source)
    assert isinstance(caught.value, LedgerflowError)
    assert message in str(caught.value)
    assert str(caught.value).startswith("run.jsonl")
    assert caught.value.line == line


def test_a_missing_file_is_a_history_error(tmp_path: Path) -> None:
    with pytest.raises(testing.HistoryError, match="cannot read history file"):
        testing.load_history(tmp_path / "nope.jsonl")


def test_a_history_must_start_with_run_created() -> None:
    history = testing.load_history(OK)
    with pytest.raises(testing.HistoryError, match="does not start with run_created"):
        testing.replay(history[1:], "process_order", run_id="r")


def test_an_unknown_workflow_name_is_refused() -> None:
    with pytest.raises(lf.UnknownWorkflowError):
        testing.replay(OK, "no_such_workflow_anywhere")


# --- sleeps, hooks and the deterministic helpers, through a file ---------------------------


@lf.step(name="history_test_add")
async def add(a: int, b: int) -> int:
    return a + b


@lf.workflow(name="history_test_patient")
async def patient(n: int) -> dict[str, Any]:
    x = await add(n, 1)
    await lf.sleep(0.01)
    payload = await lf.create_hook()
    return {"x": x, "payload": payload, "t": lf.now(), "u": lf.uuid4(), "r": lf.random()}


@lf.workflow(name="history_test_impatient")
async def impatient(n: int) -> dict[str, Any]:
    """patient without its sleep: the hook now sits where the log recorded the sleep."""
    x = await add(n, 1)
    payload = await lf.create_hook()
    return {"x": x, "payload": payload, "t": lf.now(), "u": lf.uuid4(), "r": lf.random()}


async def _record_patient(tmp_path: Path) -> Path:
    async with lf.embedded(f"history{uuid.uuid4().hex[:8]}") as client:
        run = await client.start(patient, 3)
        for _ in range(500):
            state = await client.state(run.run_id)
            live = [h for h in state.hooks.values() if h.status == "created"]
            if live:
                await client.resume_hook(live[0].token, {"ok": [1, 2]})
                break
            await asyncio.sleep(0.01)
        await run.result(timeout=5)
        events = await client.events(run.run_id)
    path = tmp_path / "patient.jsonl"
    testing.dump_history(events, path, run_id=run.run_id)
    return path


async def test_sleeps_and_hooks_replay_from_a_file(tmp_path: Path) -> None:
    path = await _record_patient(tmp_path)
    kinds = {e.type for e in testing.load_history(path)}
    assert {EventType.WAIT_COMPLETED, EventType.HOOK_RECEIVED, EventType.HOOK_DISPOSED} <= kinds
    result = testing.replay(path, patient)
    assert isinstance(result.outcome, testing.Completed)
    assert result.outcome.result["payload"] == {"ok": [1, 2]}

    error = diverges_with(path, impatient)
    assert error.position == "s2"
    assert "the log recorded a sleep, the code now does a hook" in str(error)

    # Replayed under another run id, lf.uuid4() and lf.random() compute other values.
    other = diverges_with(list(testing.load_history(path)), patient, run_id="another")
    assert other.position == "end"


def diverges_with(history: Any, workflow: Any, **kwargs: Any) -> testing.ReplayDivergenceError:
    with pytest.raises(testing.ReplayDivergenceError) as caught:
        testing.replay(history, workflow, **kwargs)
    return caught.value


@lf.workflow(name="history_test_opaque")
async def opaque() -> object:
    return object()


async def test_a_result_the_log_cannot_hold_is_judged_as_the_failure_recorded() -> None:
    async with lf.embedded(f"history{uuid.uuid4().hex[:8]}") as client:
        run = await client.start(opaque)
        with pytest.raises(lf.WorkflowFailedError, match="SerializationError"):
            await run.result(timeout=5)
        events = await client.events(run.run_id)
    result = testing.replay(events, opaque, run_id=run.run_id)
    assert isinstance(result.outcome, testing.Failed)
    assert isinstance(result.outcome.error, lf.SerializationError)


async def test_replay_allows_the_workflows_module_for_its_unregistered_dataclasses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As ``ledgerflow worker APP`` allows APP: the workflow's own classes decode, nothing else."""
    from ledgerflow.eventlog import codec

    from tests.apps import hostile
    from tests.unit.helpers import stack

    monkeypatch.setattr(codec, "_allowed", {"tests.apps.hostile"})  # to run it here
    async with stack() as s:
        run = await s.client.start(hostile.weigh, hostile.Parcel("box", 1))
        assert await run.result(timeout=10) == hostile.Parcel("box", 2)
        path = tmp_path / "weigh.jsonl"
        testing.dump_history(await s.client.events(run.run_id), path, run_id=run.run_id)
    monkeypatch.setattr(codec, "_allowed", set())
    with pytest.raises(testing.HistoryFormatError, match=r"lf\.allow_modules"):
        testing.load_history(path)
    result = testing.replay(path, hostile.weigh)
    assert isinstance(result.outcome, testing.Completed)
    assert result.outcome.result == hostile.Parcel("box", 2)
    assert "tests.apps.hostile" in codec.allowed_modules()
