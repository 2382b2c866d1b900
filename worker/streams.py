"""``lf.stream(name)``: a step writes chunks that clients read while the run goes on.

Streams are written from steps only. A workflow's code is replayed, so a chunk
written from it would be written again on every replay; a step runs once per
attempt, and its chunks carry that attempt (``eventlog/outputs.py`` says how
readers use it). A workflow that wants to stream calls a step that does.

Leaving the ``async with`` block normally ends the stream (readers stop there);
leaving it by an exception does not, since the attempt will likely be retried
and write it again. ``closes=False`` leaves the stream open for later steps of
the run (an agent's tokens over many model calls): the run's end ends it.
"""

from __future__ import annotations

from types import TracebackType
from typing import Any

from ledgerflow.eventlog.errors import LedgerflowError
from ledgerflow.eventlog.names import check_output_name
from ledgerflow.eventlog.outputs import check_chunk

from .context import StepContext, current_step_context


class StreamWriter:
    """One step attempt's writer of one stream (``lf.stream``)."""

    def __init__(self, ctx: StepContext, name: str, closes: bool) -> None:
        if ctx.outputs is None:
            raise LedgerflowError("this step runs without an event store: it cannot stream")
        self._ctx = ctx
        self._outputs = ctx.outputs
        self.name = name
        self.closes = closes
        self._closed = False

    async def write(self, value: Any) -> int:
        """Append one chunk (any value ledgerflow can encode, up to 64 KiB); its index."""
        if self._closed:
            raise LedgerflowError(f"stream {self.name!r} was closed by this writer")
        data = check_chunk(value, self.name)
        return await self._put(data)

    async def close(self) -> None:
        """End the stream now: readers following it stop after its last chunk."""
        if not self._closed:
            await self._put(None)
            self._closed = True

    async def _put(self, data: bytes | None) -> int:
        sequence = self._ctx.next_write(self.name)
        return await self._outputs.write_output(
            self._ctx.run_id,
            self.name,
            step=self._ctx.step_id,
            attempt=self._ctx.attempt,
            # The first write of a retried attempt tells readers to drop the earlier ones.
            restarted=self._ctx.attempt > 1 and sequence == 1,
            data=data,
            sequence=sequence,
        )

    async def __aenter__(self) -> StreamWriter:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None and self.closes:
            await self.close()


def stream(name: str, *, closes: bool = True) -> StreamWriter:
    """A writer of the run's output stream ``name``, for the running step.

    ``async with lf.stream("tokens") as out: await out.write(token)``.
    """
    check_output_name(name)
    ctx = current_step_context()
    if ctx is None:
        raise LedgerflowError(
            "lf.stream() writes from a running step; workflow code is replayed, so a "
            "workflow streams through a step it calls"
        )
    return StreamWriter(ctx, name, closes)
