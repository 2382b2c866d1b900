"""A worker's slots, given to the highest-priority step waiting for one.

A worker consumes every priority lane of its step queues (``names.lane``), so under
load it holds deliveries of several lanes at once; when a slot frees up it goes to
the oldest step of the highest lane waiting. With a backlog in every lane, higher
lanes are therefore dispatched first, and a lower lane's step waits only while a
higher one is waiting too. A delivery that waits too long is handed back to its
queue's tail (``Worker._give_back``), never redelivered, so waiting costs no attempt.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools


class PrioritySlots:
    """Like ``asyncio.Semaphore``, but the highest ``priority`` waiter is woken first."""

    def __init__(self, slots: int) -> None:
        self._free = slots
        self._waiting: list[tuple[int, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    async def acquire(self, priority: int = 0) -> None:
        if self._free > 0 and not self._waiting:
            self._free -= 1
            return
        granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiting, (-priority, next(self._order), granted))
        try:
            await granted
        except asyncio.CancelledError:
            if granted.done() and not granted.cancelled():
                self.release()  # it was given the slot as it was cancelled: pass it on
            raise

    def release(self) -> None:
        while self._waiting:
            _, _, granted = heapq.heappop(self._waiting)
            if not granted.done():
                granted.set_result(None)
                return
        self._free += 1

    @property
    def waiting(self) -> int:
        return sum(1 for _, _, f in self._waiting if not f.done())
