"""Output streams: what a step sends to readers while it runs (tokens, progress, logs).

A run's event log is its truth and is replayed; an output stream is not. It holds
what a step chose to show while it ran, for clients following the run live
(``lf.stream(name)`` in a step, ``client.stream(run_id, name)`` anywhere). So it
never feeds a replay, and it is kept apart from the log: a Redis stream per
(run, name) in the run's slot (``Names.output``), listed in the run's output set
(``Names.output_set``) so that removing the run removes it.

Why entry ids are positions (``0-1``, ``0-2``, ...): a reader resumes from an
index it saw (``start=``, an SSE ``Last-Event-ID``), and an explicit id makes
that one ``XRANGE`` from ``0-(index+1)``, on any process, with no id map.

Why chunks carry their step and attempt: a step that fails after writing is
retried, and its new attempt writes again. Its first chunk is flagged
``restarted`` so a reader knows to drop what that step's earlier attempts showed,
and a reader never yields a chunk of an attempt older than one it has seen of
the same step (a timed-out attempt still running somewhere). A writer that
leaves its block normally ends the stream with an end mark; the run's end ends
every stream. Only a later attempt of the step that ended a stream may write it
again (its retry): any other writer gets ``StreamClosedError``.

Limits (a step's bytes are hostile to the readers and to Redis's memory): a
chunk's encoding is at most ``MAX_CHUNK_BYTES``, a stream at most
``MAX_STREAM_BYTES`` and ``MAX_STREAM_ENTRIES`` entries, a run at most
``MAX_STREAMS_PER_RUN`` streams. A write past them is refused with
``PayloadTooLargeError``; nothing is trimmed, so a reader never misses a chunk.
"""

from __future__ import annotations

import enum
from abc import abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

from . import codec
from .errors import (
    InvalidArgumentError,
    PayloadTooLargeError,
    RunClosedError,
    RunNotFoundError,
    SerializationError,
    StreamClosedError,
)
from .names import CORR_RE, check_corr, check_output_name, check_run_id

MAX_CHUNK_BYTES: Final = 64 * 1024
MAX_STREAM_BYTES: Final = 16 * 1024 * 1024
MAX_STREAM_ENTRIES: Final = 100_000
MAX_STREAMS_PER_RUN: Final = 32
MAX_READ: Final = 1000
"""Entries one read returns at most: a reader of a long stream pages through it."""


class EntryKind(enum.StrEnum):
    CHUNK = "c"
    END = "e"


@dataclass(frozen=True, slots=True)
class OutputEntry:
    """One entry of an output stream: a chunk or an end mark, as stored."""

    index: int
    kind: EntryKind
    step: str
    attempt: int
    restarted: bool
    data: bytes


@dataclass(frozen=True, slots=True)
class Chunk:
    """One chunk as readers get it (``client.stream``)."""

    index: int
    """Its position in the stream: resume with ``start=index + 1``."""
    value: Any
    step: str
    """The step (``s3``) whose attempt wrote it."""
    attempt: int
    restarted: bool
    """The first chunk of a retried attempt: drop what this step's earlier attempts showed."""


class WriteOutcome(enum.StrEnum):
    """Why the store refused a write (``OutputStreams.write_output``)."""

    NOT_FOUND = "notfound"
    RUN_ENDED = "closed"
    STREAM_ENDED = "ended"
    TOO_MANY_STREAMS = "toomany"
    FULL = "full"


def check_write(run_id: str, name: str, step: str, attempt: int, sequence: int) -> None:
    """A write's arguments, checked before anything is sent (InvalidArgumentError)."""
    check_run_id(run_id)
    check_output_name(name)
    check_corr(step)
    if not 1 <= attempt <= 1_000_000 or sequence < 1:
        raise InvalidArgumentError(f"invalid attempt {attempt} or write number {sequence}")


def check_position(start: object) -> int:
    """A position to read a stream from (client, CLI, HTTP): an integer from 0 to 2**53."""
    if isinstance(start, int) and not isinstance(start, bool) and 0 <= start < 2**53:
        return start
    raise InvalidArgumentError(f"invalid stream position {start!r}: use an integer >= 0")


def entry_id(index: int) -> str:
    """The stream entry id of position ``index`` (0-based): ids start at ``0-1``."""
    return f"0-{index + 1}"


def check_chunk(value: Any, name: str) -> bytes:
    """A chunk's encoding, within ``MAX_CHUNK_BYTES`` (a ``SerializationError`` otherwise)."""
    return codec.encode(value, what=f"a chunk of stream {name!r}", max_size=MAX_CHUNK_BYTES)


def decode_chunk(entry: OutputEntry, name: str) -> Chunk:
    value = codec.decode(
        entry.data, what=f"chunk {entry.index} of stream {name!r}", max_size=MAX_CHUNK_BYTES
    )
    return Chunk(entry.index, value, entry.step, entry.attempt, entry.restarted)


def parse_entry(raw_id: str, fields: dict[Any, Any]) -> OutputEntry:
    """A stored entry, checked field by field: its bytes may have been written by anyone."""

    def field(name: str) -> bytes:
        value = fields.get(name.encode(), fields.get(name))
        if isinstance(value, str):
            value = value.encode()
        if not isinstance(value, bytes):
            raise SerializationError(f"output entry {raw_id!r} has no field {name!r}")
        return value

    ms, _, seq = raw_id.partition("-")
    if ms != "0" or not seq.isdigit() or int(seq) < 1:
        raise SerializationError(f"output entry id {raw_id[:40]!r} is not a position")
    try:
        kind = EntryKind(field("k").decode())
        step = field("s").decode()
        attempt = int(field("a"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise SerializationError(f"output entry {raw_id!r} is malformed: {exc}") from None
    if not CORR_RE.match(step) or not 1 <= attempt <= 1_000_000:
        raise SerializationError(f"output entry {raw_id!r} names no valid step attempt")
    data = field("v")
    if len(data) > MAX_CHUNK_BYTES:
        raise SerializationError(f"output entry {raw_id!r} is over {MAX_CHUNK_BYTES} bytes")
    return OutputEntry(int(seq) - 1, kind, step, attempt, field("r") == b"1", data)


class OutputStreams(Protocol):
    """Where output streams are kept: the event store of the run (Redis or memory)."""

    @abstractmethod
    async def write_output(
        self,
        run_id: str,
        name: str,
        *,
        step: str,
        attempt: int,
        restarted: bool,
        data: bytes | None,
        sequence: int,
    ) -> int:
        """Append a chunk (``data``), or the end mark (``data=None``); its index.

        ``sequence`` numbers the writes of one step attempt to this stream (1, 2, ...):
        a call repeated after its reply was lost finds its write already there and
        returns its index instead of writing the chunk twice.

        Raises ``RunNotFoundError``, ``RunClosedError`` (the run ended),
        ``StreamClosedError`` or ``PayloadTooLargeError`` (a limit above).
        """

    @abstractmethod
    async def read_output(
        self, run_id: str, name: str, start: int, count: int = MAX_READ
    ) -> list[OutputEntry]:
        """Entries from position ``start`` on (at most ``count``); [] if there are none yet."""

    @abstractmethod
    async def wait_output(
        self, run_id: str, name: str, start: int, timeout: float
    ) -> list[OutputEntry]:
        """Like ``read_output``, but waits up to ``timeout`` s for the first one."""

    @abstractmethod
    async def output_names(self, run_id: str) -> list[str]:
        """The run's output streams, sorted."""


def refusal(outcome: WriteOutcome, run_id: str, name: str, size: int) -> Exception:
    """The error for a write the store refused (the same text from both stores)."""
    if outcome is WriteOutcome.NOT_FOUND:
        return RunNotFoundError(run_id)
    if outcome is WriteOutcome.RUN_ENDED:
        return RunClosedError(run_id, f"stream {name!r}", "ended", "a chunk")
    if outcome is WriteOutcome.STREAM_ENDED:
        return StreamClosedError(
            f"stream {name!r} of run {run_id!r} was closed by its writer; only a retry of "
            "that step may write it again"
        )
    if outcome is WriteOutcome.TOO_MANY_STREAMS:
        return PayloadTooLargeError(
            f"run {run_id!r} already has {MAX_STREAMS_PER_RUN} streams: stream {name!r} "
            "is one too many"
        )
    return PayloadTooLargeError(
        f"stream {name!r} of run {run_id!r} is full ({MAX_STREAM_BYTES} bytes or "
        f"{MAX_STREAM_ENTRIES} chunks); this {size}-byte chunk was refused"
    )


def sorted_names(raw: Sequence[Any]) -> list[str]:
    return sorted(n.decode() if isinstance(n, bytes) else str(n) for n in raw)
