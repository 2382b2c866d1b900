"""The watcher's interrupt never targets a connection that is gone.

Regression: while it retried ``CLIENT UNBLOCK`` for a blocked read, a failover closed
that read's connection and the reader cleared its id; the next try sent
``CLIENT UNBLOCK None`` (a DataError from redis-py), which reached the waiter: a
client's ``result()`` failed in the middle of a failover it should have ridden out.
"""

from __future__ import annotations

import asyncio

from ledgerflow.eventlog.watch import _Reader


class Endpoint:
    def __init__(self) -> None:
        self.unblocked: list[object] = []

    async def open(self) -> object:
        raise AssertionError("not used here")

    async def unblock(self, client_id: int) -> bool:
        self.unblocked.append(client_id)
        return False  # the read has not reached Redis yet: the reader tries again


async def test_an_interrupt_stops_when_the_connection_it_targets_is_lost() -> None:
    endpoint = Endpoint()
    reader = _Reader(endpoint, "test-reader")  # type: ignore[arg-type]
    reader._blocked, reader._conn_id = True, 7
    interrupting = asyncio.create_task(reader._interrupt())
    await asyncio.sleep(0)  # its first try is sent, and it waits to try again
    reader._conn_id = None  # the connection was lost meanwhile
    await asyncio.wait_for(interrupting, 5)
    assert endpoint.unblocked == [7]


async def test_an_interrupt_keeps_trying_the_same_connection_until_it_answers() -> None:
    endpoint = Endpoint()
    reader = _Reader(endpoint, "test-reader")  # type: ignore[arg-type]
    reader._blocked, reader._conn_id = True, 9
    interrupting = asyncio.create_task(reader._interrupt())
    for _ in range(5):
        await asyncio.sleep(0.005)
    reader._blocked = False
    await asyncio.wait_for(interrupting, 5)
    assert len(endpoint.unblocked) >= 2 and set(endpoint.unblocked) == {9}
