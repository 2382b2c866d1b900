"""Where a model step's tokens go while it runs: the run's output stream, for clients to read.

PENDING (issue 15, item 4): output streams (``lf.stream``) are being built on main.
Until they land, ``token_sink`` gives the model no callback and nothing is streamed;
once they do, it opens ``lf.stream(name, closes=False)`` (every model call of the run
appends to the one stream, which ends with the run) and hands the model its ``write``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from .model import TokenCallback


@asynccontextmanager
async def token_sink(name: str | None) -> AsyncIterator[TokenCallback | None]:
    """A callback writing each token to the run's output stream ``name`` (None: no stream)."""
    yield None
