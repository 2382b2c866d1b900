"""Where a model step's tokens go while it runs: the run's output stream, for clients to read.

The model step opens ``lf.stream(name, closes=False)``: every model call of the run
appends to the one stream, which ends with the run, and a retried call's first
chunk comes marked ``restarted`` (readers drop what that call showed before).

Streaming is a view of the call, not its result: the reply is recorded whole in the
log whatever happened to the stream. So a stream that refuses a write (full at
100,000 chunks or 16 MiB, closed, its run ended, Redis unreachable) stops the
streaming of this call, with a warning, and never costs the model call itself: a
model call is the expensive, slow thing to repeat.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Final

import structlog

from ledgerflow.eventlog.errors import LedgerflowError
from ledgerflow.worker.context import current_step_context
from ledgerflow.worker.streams import StreamWriter, stream

from .model import TokenCallback

log = structlog.get_logger("ledgerflow.ai")

PIECE_CHARS: Final = 8000
"""A longer piece of text is written as several chunks: at 4 bytes a character at most,
each stays inside a chunk's 64 KiB."""


class _Tokens:
    """One model call's writer of tokens, which stops at the stream's first refusal."""

    def __init__(self, writer: StreamWriter) -> None:
        self._writer = writer
        self._stopped = False

    async def write(self, text: str) -> None:
        if self._stopped or not text:
            return
        for start in range(0, len(text), PIECE_CHARS):
            try:
                await self._writer.write(text[start : start + PIECE_CHARS])
            except LedgerflowError as exc:
                self._stopped = True
                log.warning(
                    "tokens no longer streamed for this model call; its reply is recorded whole",
                    stream=self._writer.name,
                    error=f"{type(exc).__name__}: {exc}",
                )
                return


@asynccontextmanager
async def token_sink(name: str | None) -> AsyncIterator[TokenCallback | None]:
    """A callback writing each token to the run's output stream ``name``.

    None (nothing streamed) when ``name`` is None, or outside a step run by a worker:
    a step called as a plain function, outside any workflow, belongs to no run.
    """
    ctx = current_step_context()
    if name is None or ctx is None or ctx.outputs is None:
        yield None
        return
    async with stream(name, closes=False) as writer:
        yield _Tokens(writer).write
