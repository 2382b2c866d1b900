"""Step messages carry their run's workflow name (for log lines), optionally on the wire."""

from __future__ import annotations

import msgpack
from ledgerflow.broker.messages import StepBatch, StepMessage, decode_message, encode_message


def test_workflow_name_round_trips_in_a_step_and_a_batch() -> None:
    step = StepMessage("r1", "s1", "charge", 1, b"", "default", workflow="checkout")
    assert decode_message(encode_message(step)) == step
    batch = StepBatch((step, StepMessage("r1", "s2", "ship", 1, b"", "default", "checkout")))
    decoded = decode_message(encode_message(batch))
    assert isinstance(decoded, StepBatch)
    assert [s.workflow for s in decoded.steps] == ["checkout", "checkout"]


def test_a_message_without_a_workflow_name_still_decodes() -> None:
    """What a process from before this field sends: no "wf" key."""
    body = msgpack.packb(
        {"v": 1, "k": "step", "run_id": "r", "step_id": "s1", "step_name": "n", "attempt": 1,
         "args": b"", "queue": "default"},
        use_bin_type=True,
    )  # fmt: skip
    decoded = decode_message(body)
    assert isinstance(decoded, StepMessage) and decoded.workflow == ""
    assert "wf" not in msgpack.unpackb(encode_message(decoded))
