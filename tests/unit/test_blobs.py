"""Blob references in the codec, the offload decision, and the byte-bounded cache."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import msgpack
import pytest
from ledgerflow.eventlog import codec
from ledgerflow.eventlog.blobs import (
    Blob,
    BlobCache,
    BlobRef,
    check_fetched,
    offload_paths,
)
from ledgerflow.eventlog.errors import BlobError, PayloadTooLargeError, SerializationError
from ledgerflow.eventlog.events import EventType, NewEvent
from ledgerflow.eventlog.jsonview import view
from ledgerflow.worker.registry import StepDef

DIGEST = "ab" * 32


def test_a_reference_round_trips_through_the_codec() -> None:
    ref = BlobRef(DIGEST, 123)
    assert codec.decode(codec.encode({"result": ref})) == {"result": ref}
    assert view(ref) == {"$type": "blob", "sha256": DIGEST, "size": 123}


@pytest.mark.parametrize(
    "inner",
    [
        msgpack.packb(["nothex" * 10, 1]),
        msgpack.packb([DIGEST, -1]),
        msgpack.packb([DIGEST, "12"]),
        msgpack.packb([DIGEST]),
        msgpack.packb({"digest": DIGEST}),
        msgpack.packb([DIGEST.upper(), 1]),
    ],
)
def test_a_malformed_reference_is_a_serialization_error(inner: bytes) -> None:
    data = msgpack.packb(msgpack.ExtType(11, inner))
    with pytest.raises(SerializationError, match="blob reference"):
        codec.decode(data)


def test_small_values_stay_inline_and_large_ones_go_out(monkeypatch: pytest.MonkeyPatch) -> None:
    small = NewEvent.of(EventType.STEP_COMPLETED, "s1", {"result": "x"}, offload=(("result",),))
    assert small.blobs == ()
    big = NewEvent.of(
        EventType.STEP_COMPLETED, "s1", {"result": b"y" * 70_000}, offload=(("result",),)
    )
    (blob,) = big.blobs
    assert blob.ref.digest == hashlib.sha256(blob.data).hexdigest()
    assert codec.decode(blob.data) == b"y" * 70_000
    assert codec.decode(big.payload) == {"result": blob.ref}
    monkeypatch.setenv("LEDGERFLOW_OFFLOAD_THRESHOLD", "0")
    with pytest.raises(PayloadTooLargeError, match="payload limit"):
        NewEvent.of(
            EventType.STEP_COMPLETED, "s1", {"result": b"y" * (2 << 20)}, offload=(("result",),)
        )


def test_offloading_copies_containers_and_keeps_small_arguments_inline() -> None:
    args = [b"a" * 100_000, 7]
    kwargs = {"big": b"b" * 100_000, "small": "s"}
    value = [args, kwargs]
    out, blobs = offload_paths(value, ((0, "*"), (1, "*")), what="args", threshold=1000)
    assert len(blobs) == 2
    assert out == [[blobs[0].ref, 7], {"big": blobs[1].ref, "small": "s"}]
    assert value == [args, kwargs] and args[0] == b"a" * 100_000  # untouched


def test_step_arguments_carry_references_and_the_fingerprint_covers_them() -> None:
    step = StepDef(name="upload", fn=lambda data: None)
    encoded, blobs = step.encode_call((b"z" * 100_000,), {})
    assert len(encoded) < 200 and len(blobs) == 1
    again, _ = step.encode_call((b"z" * 100_000,), {})
    assert again == encoded  # same value, same reference: replay matches
    assert step.encode_args((b"z" * 10,), {}) == codec.encode([[b"z" * 10], {}])


def test_fetched_bytes_are_checked_against_the_reference() -> None:
    blob = Blob.of(codec.encode("hello"))
    assert check_fetched("r", blob.ref, blob.data) == blob.data
    with pytest.raises(BlobError, match="holds no blob"):
        check_fetched("r", blob.ref, None)
    with pytest.raises(BlobError, match="reference says"):
        check_fetched("r", blob.ref, blob.data + b"x")
    with pytest.raises(BlobError, match="checksum"):
        check_fetched("r", blob.ref, b"\0" * len(blob.data))


class _Counting:
    def __init__(self, blobs: Sequence[Blob]) -> None:
        self.blobs = {b.ref.digest: b.data for b in blobs}
        self.reads = 0

    async def get_blob(self, run_id: str, ref: BlobRef) -> bytes:
        self.reads += 1
        return check_fetched(run_id, ref, self.blobs.get(ref.digest))

    async def put_blobs(self, run_id: str, blobs: Sequence[Blob], *, creating: bool) -> bool:
        return True

    async def blob_digests(self, run_id: str) -> set[str]:
        return set(self.blobs)

    async def blob_size(self, run_id: str, digest: str) -> int | None:
        return None


async def test_the_cache_is_bounded_in_bytes() -> None:
    blobs = [Blob.of(codec.encode(bytes([i]) * 1000)) for i in range(5)]
    source = _Counting(blobs)
    cache = BlobCache(source, max_bytes=2500)
    for blob in blobs:
        assert await cache.fetch("r", blob.ref) == codec.decode(blob.data)
    assert cache.bytes <= 2500
    await cache.fetch("r", blobs[-1].ref)
    assert source.reads == 5  # the newest stayed
    await cache.fetch("r", blobs[0].ref)
    assert source.reads == 6  # the oldest was dropped
