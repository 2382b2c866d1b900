"""Workflows with a retention of their own, for the retention tests."""

from __future__ import annotations

import datetime as dt

import ledgerflow as lf
from tests.apps import arith


@lf.workflow(name="it_retained", retention=dt.timedelta(seconds=1))
async def retained(n: int) -> int:
    """Kept one second after it finishes."""
    return await arith.add(n, n)


@lf.workflow(name="it_retained_parent", retention=dt.timedelta(hours=1))
async def retained_parent(n: int) -> int:
    """Kept an hour; its child keeps its own workflow's retention (one second)."""
    return await retained(n) + 1
