"""Wire format of step messages and activations: round trips and every way to be malformed."""

from __future__ import annotations

import msgpack
import pytest
from ledgerflow.broker.base import MAX_REASON, bounded_reason
from ledgerflow.broker.messages import (
    SCHEMA_VERSION,
    Activation,
    StepBatch,
    StepMessage,
    decode_message,
    encode_message,
)
from ledgerflow.eventlog.errors import MalformedMessageError

STEP = StepMessage(
    run_id="run-1",
    step_id="s3",
    step_name="charge_card",
    attempt=2,
    args=b"\x93\x01\x02\x03",
    queue="payments",
)


def _step_map(**changes: object) -> dict[str, object]:
    raw: dict[str, object] = {
        "v": SCHEMA_VERSION,
        "k": "step",
        "run_id": "r",
        "step_id": "s1",
        "step_name": "n",
        "attempt": 1,
        "args": b"",
        "queue": "default",
    }
    raw.update(changes)
    return raw


def _pack(value: object) -> bytes:
    packed: bytes = msgpack.packb(value, use_bin_type=True)
    return packed


def test_step_round_trip() -> None:
    assert decode_message(encode_message(STEP)) == STEP


def test_activation_round_trip() -> None:
    for msg in (Activation("run-1"), Activation("run-2", reason="step s1 completed")):
        assert decode_message(encode_message(msg)) == msg


def test_envelope_carries_version_and_kind() -> None:
    raw = msgpack.unpackb(encode_message(STEP), raw=False)
    assert raw["v"] == 1 and raw["k"] == "step"
    raw = msgpack.unpackb(encode_message(Activation("r")), raw=False)
    assert raw["v"] == 1 and raw["k"] == "activation"


def test_args_stay_opaque_bytes() -> None:
    blob = bytes(range(256))
    decoded = decode_message(encode_message(StepMessage("r", "s1", "n", 1, blob, "default")))
    assert isinstance(decoded, StepMessage) and decoded.args == blob


def test_step_message_id_names_the_attempt() -> None:
    assert STEP.message_id == "run-1:s3:2"


def test_activation_reason_is_optional_on_the_wire() -> None:
    assert decode_message(_pack({"v": 1, "k": "activation", "run_id": "r"})) == Activation("r")


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"", "not valid msgpack"),
        (b"\xc1", "not valid msgpack"),  # 0xc1 is never used by msgpack
        (b"\x92\x01", "not valid msgpack"),  # truncated array
        (_pack({"v": 1, "k": "activation", "run_id": "r"}) + b"\x00", "not valid msgpack"),
        (_pack([1, "step"]), "must be a msgpack map, got list"),
        (_pack("hello"), "must be a msgpack map, got str"),
        (_pack({"k": "step"}), "unsupported message schema version None"),
        (_pack(_step_map(v=2)), "version 2; this process supports version 1"),
        (_pack(_step_map(v="1")), "unsupported message schema version '1'"),
        (_pack(_step_map(k="timer")), "unknown message kind 'timer'"),
        (_pack({"v": 1, "run_id": "r"}), "unknown message kind None"),
        (_pack({"v": 1, "k": "activation"}), "activation message is missing field 'run_id'"),
        (
            _pack({"v": 1, "k": "activation", "run_id": "r", "reason": 5}),
            "field 'reason' must be str, got int",
        ),
        (_pack({1: 2}), "not valid msgpack"),  # strict_map_key: non-str keys are refused
    ],
)
def test_malformed_envelopes(body: bytes, fragment: str) -> None:
    with pytest.raises(MalformedMessageError) as info:
        decode_message(body)
    assert fragment in str(info.value)


@pytest.mark.parametrize("field", ["run_id", "step_id", "step_name", "attempt", "args", "queue"])
def test_missing_step_field_is_named(field: str) -> None:
    raw = _step_map()
    del raw[field]
    with pytest.raises(MalformedMessageError, match=f"step message is missing field '{field}'"):
        decode_message(_pack(raw))


@pytest.mark.parametrize(
    ("field", "value", "fragment"),
    [
        ("run_id", 7, "field 'run_id' must be str, got int"),
        ("step_id", b"s1", "field 'step_id' must be str, got bytes"),
        ("step_name", None, "field 'step_name' must be str, got NoneType"),
        ("attempt", "1", "field 'attempt' must be int, got str"),
        ("attempt", 1.0, "field 'attempt' must be int, got float"),
        ("attempt", True, "'attempt' must be a positive int, got True"),
        ("attempt", 0, "'attempt' must be a positive int, got 0"),
        ("args", "text", "field 'args' must be bytes, got str"),
        ("queue", ["default"], "field 'queue' must be str, got list"),
    ],
)
def test_wrongly_typed_step_field_is_named(field: str, value: object, fragment: str) -> None:
    with pytest.raises(MalformedMessageError) as info:
        decode_message(_pack(_step_map(**{field: value})))
    assert fragment in str(info.value)


def _batch_map(steps: object) -> dict[str, object]:
    return {"v": SCHEMA_VERSION, "k": "steps", "run_id": "r", "queue": "q", "steps": steps}


def test_step_batch_round_trip_and_id() -> None:
    batch = StepBatch(
        tuple(
            StepMessage("run-1", f"s{i}", "noop", 1, bytes([i]), queue="payments")
            for i in range(1, 4)
        )
    )
    assert decode_message(encode_message(batch)) == batch
    assert batch.message_id == "run-1:s1..s3:1"
    assert (batch.run_id, batch.queue) == ("run-1", "payments")


def test_a_step_batch_holds_one_run_and_one_queue() -> None:
    with pytest.raises(ValueError, match="at least one step"):
        StepBatch(())
    with pytest.raises(ValueError, match="one run and one queue"):
        StepBatch((STEP, StepMessage("run-2", "s1", "n", 1, b"", queue="payments")))


@pytest.mark.parametrize(
    ("steps", "fragment"),
    [
        ([], "empty 'steps' list"),
        ("s1", "field 'steps' must be list, got str"),
        ([["s1", "n", 1]], "item 0 must be [step_id, step_name, attempt, args]"),
        ([["s1", "n", 1, b""], "s2"], "item 1 must be"),
        ([["s1", 5, 1, b""]], "steps[0] message field 'step_name' must be str, got int"),
        ([["s1", "n", 0, b""]], "steps[0] message field 'attempt' must be a positive int"),
        ([["s1", "n", 1, "text"]], "field 'args' must be bytes, got str"),
    ],
)
def test_malformed_step_batches_are_named(steps: object, fragment: str) -> None:
    with pytest.raises(MalformedMessageError) as info:
        decode_message(_pack(_batch_map(steps)))
    assert fragment in str(info.value)


def test_pickle_is_not_accepted() -> None:
    import pickle

    with pytest.raises(MalformedMessageError):
        decode_message(pickle.dumps(Activation("r")))


# --- identifiers a message may carry (issue 11, item 2) ---------------------------------


@pytest.mark.parametrize("run_id", ["a|b", "a{b}", "a b", "", "x" * 201, "line\nbreak"])
def test_a_run_id_outside_the_rule_makes_any_message_malformed(run_id: str) -> None:
    bodies = [
        _pack(_step_map(run_id=run_id)),
        _pack({"v": SCHEMA_VERSION, "k": "activation", "run_id": run_id}),
        _pack(
            {
                "v": SCHEMA_VERSION,
                "k": "steps",
                "run_id": run_id,
                "queue": "default",
                "steps": [["s1", "n", 1, b""]],
            }
        ),
    ]
    for body in bodies:
        with pytest.raises(MalformedMessageError, match="'run_id': invalid run id"):
            decode_message(body)


@pytest.mark.parametrize("step_id", ["s|1", "", "s" * 65])
def test_a_step_id_that_cannot_be_a_log_id_is_malformed(step_id: str) -> None:
    with pytest.raises(MalformedMessageError, match="'step_id'"):
        decode_message(_pack(_step_map(step_id=step_id)))
    batch = {
        "v": SCHEMA_VERSION,
        "k": "steps",
        "run_id": "r",
        "queue": "default",
        "steps": [["s1", "n", 1, b""], [step_id, "n", 1, b""]],
    }
    with pytest.raises(MalformedMessageError, match=r"steps\[1\] message field 'step_id'"):
        decode_message(_pack(batch))


def test_an_attempt_past_the_bound_is_malformed() -> None:
    with pytest.raises(MalformedMessageError, match="'attempt' must be at most 2147483647"):
        decode_message(_pack(_step_map(attempt=2**31)))
    assert decode_message(_pack(_step_map(attempt=2**31 - 1))).attempt == 2**31 - 1


def test_child_and_generated_run_ids_pass() -> None:
    for run_id in ("0f3c9a", "order-42", "parent.s3", "tenant:7.s1.s2", "A_b-c.d:e"):
        assert decode_message(encode_message(Activation(run_id))) == Activation(run_id)


def test_dead_letter_reasons_are_bounded_head_and_tail_kept() -> None:
    assert bounded_reason("short") == "short"
    reason = bounded_reason("a" * 10 + "b" * 300_000 + "c" * 10)
    assert len(reason) < MAX_REASON + 100
    assert reason.startswith("a" * 10) and reason.endswith("c" * 10)
    assert "characters cut" in reason


# --- hostile bodies: size, length bombs, allocation -------------------------------------------


def test_a_body_over_the_message_limit_is_refused_before_unpacking() -> None:
    from ledgerflow.broker.topology import MAX_MESSAGE_BYTES

    big = _pack(_step_map(args=b"\0" * MAX_MESSAGE_BYTES))
    with pytest.raises(MalformedMessageError, match=f"over the {MAX_MESSAGE_BYTES}-byte limit"):
        decode_message(big)
    assert decode_message(_pack(_step_map(args=b"\0" * 1_000_000))).args == b"\0" * 1_000_000


@pytest.mark.parametrize(
    "body",
    [
        b"\xdd\x80\x00\x00\x00" + b"\x00" * 5,  # an array claiming 2**31 elements
        b"\xdf\x80\x00\x00\x00" + b"\x00" * 5,  # a map claiming 2**31 pairs
        b"\x81\xa4args\xc6\x7f\xff\xff\xff" + b"\x00" * 5,  # bytes claiming 2 GiB
    ],
    ids=["array", "map", "bin"],
)
def test_length_bombs_are_malformed(body: bytes) -> None:
    with pytest.raises(MalformedMessageError, match="not valid msgpack"):
        decode_message(body)


@pytest.mark.parametrize(
    ("filler", "fragment"),
    [({}, "one map"), ([], "more arrays")],
    ids=["maps", "arrays"],
)
def test_a_body_of_empty_containers_is_refused_early(filler: object, fragment: str) -> None:
    """A megabyte of empty maps would cost 70 MB once unpacked: refused as it is built."""
    import tracemalloc

    body = _pack({**_step_map(), "x": [filler] * 1_000_000})
    tracemalloc.start()
    try:
        with pytest.raises(MalformedMessageError, match=fragment):
            decode_message(body)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 12 * len(body)


def test_hostile_field_values_are_quoted_briefly() -> None:
    with pytest.raises(MalformedMessageError) as info:
        decode_message(_pack({"v": "x" * 100_000}))
    assert len(str(info.value)) < 300
    with pytest.raises(MalformedMessageError) as nested:
        decode_message(_pack({"v": 1, "k": [1, 2]}))
    assert "a list" in str(nested.value)


@pytest.mark.parametrize(
    ("field", "value", "says"),
    [
        ("queue", "bad queue!", "'queue'"),
        ("queue", "q" * 1001, "'queue'"),
        ("step_name", "x" * 1001, "'step_name' is 1001 characters"),
        ("wf", "w" * 100_000, "'wf' is 100000 characters"),
    ],
)
def test_names_a_message_carries_are_bounded_and_well_formed(
    field: str, value: str, says: str
) -> None:
    with pytest.raises(MalformedMessageError, match=says):
        decode_message(_pack(_step_map(**{field: value})))
