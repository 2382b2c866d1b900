"""The archive sink protocol, the directory sink, and choosing a sink from ``--to``.

A sink stores named blobs of bytes. Its one promise that matters: when ``put``
returns, the bytes are durable and complete under that name (never a partial
file under the final name), because the caller deletes the only other copy
right after.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import os
import re
import secrets
from typing import Protocol

from ledgerflow.eventlog.errors import ConfigurationError, LedgerflowError

SUFFIX = ".jsonl.gz"
_NAME_RE = re.compile(r"^[A-Za-z0-9_:\-][A-Za-z0-9_.:\-]*\Z")


class ArchiveError(LedgerflowError):
    """An archive could not be written or read; the run it was for is left in place."""


def archive_name(run_id: str) -> str:
    """The file (object) name of a run's archive: ``<run_id>.jsonl.gz``."""
    return f"{run_id}{SUFFIX}"


def check_name(name: str) -> str:
    """A sink name is one path component: no ``/``, no leading dot (temp files use one)."""
    if not _NAME_RE.match(name):
        raise ArchiveError(f"invalid archive name {name!r}")
    return name


class ArchiveSink(Protocol):
    """Somewhere archives are put and read back."""

    @property
    def where(self) -> str:
        """Where this sink writes, for messages (never carries a credential)."""

    async def put(self, name: str, data: bytes) -> None:
        """Store ``data`` under ``name``, replacing any earlier one; durable when it returns.

        Raises ArchiveError (or lets an OSError through) when that cannot be
        promised; then nothing under ``name`` changed.
        """

    async def get(self, name: str) -> bytes:
        """The bytes stored under ``name``; ArchiveError if there are none."""

    async def list(self, prefix: str = "") -> builtins.list[str]:
        """The names stored, sorted, optionally only those starting with ``prefix``."""


class DirectorySink:
    """Archives as files in one local directory (created if missing).

    ``put`` writes a temporary file in the same directory, flushes and fsyncs
    it, renames it over the final name (atomic on POSIX), then fsyncs the
    directory so the rename itself survives a crash.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)

    @property
    def where(self) -> str:
        return self.path

    async def put(self, name: str, data: bytes) -> None:
        await asyncio.to_thread(self._put, check_name(name), data)

    async def get(self, name: str) -> bytes:
        return await asyncio.to_thread(self._get, check_name(name))

    async def list(self, prefix: str = "") -> builtins.list[str]:
        return await asyncio.to_thread(self._list, prefix)

    def _put(self, name: str, data: bytes) -> None:
        os.makedirs(self.path, exist_ok=True)
        final = os.path.join(self.path, name)
        temp = os.path.join(self.path, f".{name}.{secrets.token_hex(4)}.tmp")
        try:
            with open(temp, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            os.replace(temp, final)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):  # gone already: nothing to clean up
                os.unlink(temp)
            raise
        _fsync_directory(self.path)

    def _get(self, name: str) -> bytes:
        try:
            with open(os.path.join(self.path, name), "rb") as fp:
                return fp.read()
        except FileNotFoundError:
            raise ArchiveError(f"no archive {name!r} in {self.path}") from None

    def _list(self, prefix: str) -> builtins.list[str]:
        try:
            names = os.listdir(self.path)
        except FileNotFoundError:
            return []
        return sorted(n for n in names if n.startswith(prefix) and not n.startswith("."))


def _fsync_directory(path: str) -> None:
    """Make a rename in ``path`` durable: fsync the directory itself."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


S3_SCHEME = "s3://"


def open_sink(target: str) -> ArchiveSink:
    """The sink ``--to`` names: ``s3://bucket/prefix`` for S3, anything else a directory."""
    if target.startswith(S3_SCHEME):
        bucket, _, prefix = target[len(S3_SCHEME) :].partition("/")
        if not bucket:
            raise ConfigurationError(f"--to {target!r}: expected s3://BUCKET[/PREFIX]")
        try:
            from .s3 import S3Sink
        except ImportError as exc:
            raise ConfigurationError(
                f"--to {target!r} needs boto3: pip install 'ledgerflow[s3]' ({exc})"
            ) from exc
        return S3Sink(bucket, prefix.strip("/"))
    if not target:
        raise ConfigurationError("--to: name a directory or s3://BUCKET[/PREFIX]")
    return DirectorySink(target)
