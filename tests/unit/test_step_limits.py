"""A step's payload limit has a ceiling, and its arguments are decoded within its own limit."""

from __future__ import annotations

import msgpack
import pytest
from ledgerflow.eventlog import codec
from ledgerflow.eventlog.errors import PayloadTooLargeError, SerializationError
from ledgerflow.worker.registry import StepDef

import ledgerflow as lf


@pytest.mark.parametrize("limit", [0, codec.MAX_PAYLOAD + 1])
def test_max_payload_outside_its_range_is_refused_at_decoration(limit: int) -> None:
    expected = f"max_payload must be between 1 and {codec.MAX_PAYLOAD}"
    with pytest.raises(lf.ConfigurationError, match=expected):

        @lf.step(name=f"sl_out_of_range_{limit}", max_payload=limit)
        async def upload(data: bytes) -> None: ...


def test_the_ceiling_itself_is_allowed() -> None:
    @lf.step(name="sl_at_ceiling", max_payload=codec.MAX_PAYLOAD)
    async def upload(data: bytes) -> int:
        return len(data)

    assert upload.definition.max_payload == codec.MAX_PAYLOAD


def test_arguments_are_decoded_within_the_steps_own_limit() -> None:
    blob = msgpack.packb([[b"\0" * 5000], {}])
    assert StepDef.decode_args(blob, max_size=len(blob)) == ([b"\0" * 5000], {})
    with pytest.raises(PayloadTooLargeError, match="step arguments is"):
        StepDef.decode_args(blob, max_size=4096)


@pytest.mark.parametrize(
    "value",
    [[[1], {1: 2}], [[1], {b"k": 2}], [(1,), {}], [[1]], {"args": []}],
    ids=["int-key", "bytes-key", "tuple-args", "no-kwargs", "map"],
)
def test_arguments_that_are_not_an_args_kwargs_pair_are_refused(value: object) -> None:
    with pytest.raises(SerializationError, match="step arguments"):
        StepDef.decode_args(codec.encode(value))
