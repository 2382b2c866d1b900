"""Typed event records: decoded once, total over hostile data, and old logs keep their defaults."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from ledgerflow.broker.messages import step_message
from ledgerflow.eventlog import codec, lua, records, statushash
from ledgerflow.eventlog.events import Event, EventType
from ledgerflow.eventlog.kinds import RUN_TERMINAL_STATES, RunStatus
from ledgerflow.eventlog.names import DEFAULT_STEP_QUEUE
from ledgerflow.eventlog.records import ErrorInfo, StepCreated, decode_record
from ledgerflow.eventlog.transitions import RULES, STATE_AFTER
from ledgerflow.scheduler.history import load_history

GOLDENS = sorted((Path(__file__).resolve().parent.parent / "replay").glob("*.jsonl"))
HOSTILE: list[Any] = [None, 7, "text", [1, 2], b"\x00", {"name": 5, "args": 12_345_678_901}]


@pytest.mark.parametrize("event_type", list(EventType))
@pytest.mark.parametrize("data", HOSTILE, ids=repr)
def test_every_type_decodes_anything_without_raising(event_type: EventType, data: Any) -> None:
    event = Event(id="1-0", type=event_type, corr="s1", data=data, ts=1)
    assert type(event.record).__name__ == "".join(p.title() for p in event_type.value.split("_"))


def test_a_step_created_without_queue_or_readable_arguments_gets_the_documented_defaults() -> None:
    record = decode_record(EventType.STEP_CREATED, {"name": "charge", "args": 12})
    assert record == StepCreated(name="charge", queue=DEFAULT_STEP_QUEUE, args=None)
    message = step_message("r1", "s1", record, attempt=2)
    assert (message.queue, message.args, message.attempt) == (DEFAULT_STEP_QUEUE, b"", 2)


def test_a_step_created_that_is_not_a_map_holds_no_arguments_to_send() -> None:
    assert decode_record(EventType.STEP_CREATED, [1, 2]) == StepCreated(args=None)
    assert decode_record(EventType.STEP_CREATED, {"name": "x"}) == StepCreated(name="x")


def test_a_child_run_step_is_told_by_its_record_not_by_its_name() -> None:
    child = records.ChildSpec("billing", "r1.s1", [1], {"k": 2})
    written = StepCreated(name="ignored", queue="", child=child).as_data()
    record = decode_record(EventType.STEP_CREATED, written)
    assert isinstance(record, StepCreated) and record.child == child
    plain = decode_record(EventType.STEP_CREATED, {"name": "billing", "queue": "default"})
    assert isinstance(plain, StepCreated) and plain.child is None


def test_a_cancelled_child_is_a_typed_check_on_the_error() -> None:
    assert ErrorInfo("ledgerflow.RunCancelled", "stop").is_cancellation
    assert ErrorInfo("eventlog.errors.RunCancelled", "older logs").is_cancellation
    assert not ErrorInfo("NotRunCancelled", "x").is_cancellation


@pytest.mark.parametrize("path", GOLDENS, ids=lambda p: p.stem)
def test_old_logs_decode_with_every_field_read_and_the_unread_fp_ignored(path: Path) -> None:
    with codec.inspecting():  # the goldens' classes are not this test's to import
        history = load_history(path)
    for event in history:
        assert event.record == decode_record(event.type, event.data)
        if isinstance(event.record, StepCreated):
            assert event.record.queue == "default" and event.record.args
            assert event.record.call_fingerprint == ""  # recorded before call fingerprints


def test_status_enums_and_state_after_come_from_the_transition_table() -> None:
    assert {str(s) for s in RunStatus} == set(RULES["run"]) - {""}
    assert set(RunStatus) > RUN_TERMINAL_STATES
    assert STATE_AFTER[EventType.HOOK_RECEIVED] == "created"
    assert set(STATE_AFTER) == set(EventType)


def test_the_scripts_name_status_fields_only_through_the_layout_module() -> None:
    prelude = statushash.lua_helpers()
    scripts = [
        lua.APPEND_SCRIPT,
        lua.HEARTBEAT_SCRIPT,
        lua.ENTITY_SCRIPT,
        lua.REWRITE_DERIVED_SCRIPT,
    ]
    for script in scripts:
        assert prelude in script
        body = script.replace(prelude, "")
        assert not re.findall(r"'[acxfhk]:'", body), body
        literal_field = r"'H(?:SET|GET|MGET|INCRBY)', (?:status|KEYS\[\d\]), '"
        assert not re.findall(literal_field, body), body


@pytest.mark.parametrize(
    "record",
    [
        StepCreated(name="charge", queue="slow", args=b"\x90", call_fingerprint="f" * 32),
        records.StepStarted(worker="w1", timeout=2.5),
        records.StepStarted(),
        records.RunCreated(workflow="w", args=[1], kwargs={"k": 2}),
        records.RunCreated(workflow="w", parent=records.ParentRef("p", "s1")),
    ],
    ids=repr,
)
def test_what_a_writer_records_decodes_to_the_same_record(record: Any) -> None:
    event_type = {
        StepCreated: EventType.STEP_CREATED,
        records.StepStarted: EventType.STEP_STARTED,
        records.RunCreated: EventType.RUN_CREATED,
    }[type(record)]
    assert decode_record(event_type, record.as_data()) == record


def test_a_continuations_links_and_carried_payloads_round_trip() -> None:
    created = records.RunCreated(
        workflow="w", continued_from="r", carried={"tok": [1, {"a": 2}], "other": ["x"]}
    )
    data = created.as_data()
    assert data["hook_tokens"] == ["tok", "tok", "other"]
    assert decode_record(EventType.RUN_CREATED, data) == created
    ended = records.RunCompleted(continued_as="r:c1")
    assert decode_record(EventType.RUN_COMPLETED, ended.as_data()) == ended
    # Logs written before chains, and malformed carried lists, read as no link, nothing carried.
    plain = decode_record(EventType.RUN_CREATED, {"workflow": "w", "hook_payloads": [1]})
    assert isinstance(plain, records.RunCreated)
    assert (plain.continued_from, plain.carried) == (None, {})
    done = decode_record(EventType.RUN_COMPLETED, {"result": 5})
    assert done == records.RunCompleted(result=5, continued_as=None)
