"""Archiving finished runs: write each as a compressed history, then remove it from Redis.

The order is the whole point. A run is read, written to the sink as one
``<run_id>.jsonl.gz`` file in exactly the ``runs export`` format (so
``ledgerflow replay``, ``lf.testing.replay`` and ``runs show --archive`` read
it), and only once the sink's ``put`` has returned (durable: fsynced and
renamed, or stored by S3) is the run removed, with ``expected_last`` set to the
newest entry that was written: a run that changed after it was read stays in
Redis (MOVED) and a later archive writes it again. A failed write leaves the
run where it was. Live runs are never archived.

Used by ``ledgerflow runs archive`` and, through ``Archiver`` as the janitor's
disposer, by retention with ``--retention-archive``.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Sequence
from dataclasses import dataclass

import structlog
from ledgerflow.eventlog import codec
from ledgerflow.eventlog.blobs import fetch_run_blobs
from ledgerflow.eventlog.errors import SerializationError
from ledgerflow.eventlog.events import RUN_TERMINAL, Event
from ledgerflow.eventlog.store import EventStore, RemoveOutcome

from ledgerflow.ops.archive import ArchiveError, ArchiveSink, archive_name, open_sink
from ledgerflow.ops.archive.sink import S3_SCHEME

from .history import History, HistoryError, compress_history, format_history, load_history
from .history import loads_history as _loads

log = structlog.get_logger("ledgerflow.archive")


class ArchiveOutcome(enum.StrEnum):
    """What archiving one run did."""

    ARCHIVED = "archived"  # written, synced, and removed from Redis
    NOT_FOUND = "not_found"  # no such run (never created, or removed meanwhile)
    LIVE = "live"  # refused: the run is not finished; nothing written
    UNREADABLE = "unreadable"  # refused: its data cannot be decoded exactly here; nothing written
    MOVED = "moved"  # written, but the run changed after it was read: left in Redis


@dataclass(frozen=True, slots=True)
class Archived:
    """One run's archive: what happened, where it went, how big."""

    run_id: str
    outcome: ArchiveOutcome
    name: str = ""
    events: int = 0
    size: int = 0
    reason: str = ""


def encode_run(
    run_id: str, events: Sequence[Event], blobs: dict[str, bytes] | None = None
) -> bytes:
    """A run's archive file: its history (the ``runs export`` format, with the values it
    stored out of line), gzip-compressed."""
    history = History(list(events), run_id=run_id, blobs=blobs)
    return compress_history(format_history(history, run_id=run_id))


class Archiver:
    """Archives runs of one store into one sink: ``archive`` (the CLI), ``dispose`` (janitor)."""

    def __init__(self, store: EventStore, sink: ArchiveSink) -> None:
        self.store = store
        self.sink = sink

    async def dispose(self, run_id: str) -> RemoveOutcome:
        """The janitor's disposer (``--retention-archive``): archive, then say what removal did.

        A run that cannot be decoded exactly is left in place and logged with the
        reason; the janitor counts it as refused (``moved``: not removed, retry
        later). A sink failure propagates: the sweep stops, nothing more is removed
        until the sink works again.
        """
        archived = await self.archive(run_id)
        if archived.outcome is ArchiveOutcome.UNREADABLE:
            log.warning(
                "run past its retention not archived: its data cannot be decoded exactly "
                "(reconciler --app MODULE)",
                run_id=run_id,
                reason=archived.reason,
            )
            return RemoveOutcome.MOVED
        if archived.outcome is ArchiveOutcome.ARCHIVED:
            log.debug("run archived", run_id=run_id, to=self.sink.where, bytes=archived.size)
        return _REMOVED_AS[archived.outcome]

    async def archive(self, run_id: str) -> Archived:
        """Write the run to the sink, then remove it if it is still exactly what was written.

        The log is decoded exactly (never into ``Unregistered`` stand-ins, even in
        a read-only tool), so the file re-encodes to the bytes the log holds; a run
        whose data this process cannot decode (its app's classes not importable)
        is refused as UNREADABLE. A sink failure propagates (ArchiveError or
        OSError) with the run untouched.
        """
        try:
            with codec.exact():
                events = await self.store.read(run_id)
        except SerializationError as exc:
            # An unknown class or a damaged entry: a copy could not be the run itself.
            return Archived(run_id, ArchiveOutcome.UNREADABLE, reason=str(exc))
        if not events:
            return Archived(run_id, ArchiveOutcome.NOT_FOUND)
        if not any(event.type in RUN_TERMINAL for event in events):
            return Archived(run_id, ArchiveOutcome.LIVE, events=len(events))
        data = encode_run(run_id, events, await fetch_run_blobs(self.store.blob_store, run_id))
        name = archive_name(run_id)
        await self.sink.put(name, data)
        removed = await self.store.remove_run(run_id, expected_last=events[-1].id)
        outcome = _ARCHIVED_AS[removed]
        return Archived(run_id, outcome, name=name, events=len(events), size=len(data))


_ARCHIVED_AS = {
    RemoveOutcome.REMOVED: ArchiveOutcome.ARCHIVED,
    RemoveOutcome.NOT_FOUND: ArchiveOutcome.NOT_FOUND,
    RemoveOutcome.LIVE: ArchiveOutcome.LIVE,
    RemoveOutcome.MOVED: ArchiveOutcome.MOVED,
}
_REMOVED_AS = {archived: removed for removed, archived in _ARCHIVED_AS.items()}


async def read_archive(target: str | os.PathLike[str]) -> History:
    """An archived run's history: a local file, or ``s3://BUCKET/PREFIX/NAME`` from S3.

    Any failure to fetch or parse it is a HistoryError.
    """
    text = os.fspath(target)
    if not text.startswith(S3_SCHEME):
        return load_history(text)
    place, _, name = text.rpartition("/")
    if not name or place.rstrip("/") + "/" == S3_SCHEME:
        raise HistoryError(f"{text!r}: expected s3://BUCKET/[PREFIX/]NAME")
    try:
        data = await open_sink(place).get(name)
    except ArchiveError as exc:
        raise HistoryError(str(exc)) from exc
    return _loads(data, name=text)
