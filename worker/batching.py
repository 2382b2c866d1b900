"""Per-run coalescing of the worker's writes: group commit for appends, one activation per round.

A batch of steps finishing together would otherwise cost one Lua call and one
confirmed publish each. Here the first writer for a run goes at once; whoever
arrives while that call is in flight rides on the next one, so under load the
calls merge by themselves and an idle system pays no added latency. Nothing is
delayed on purpose, and every caller returns only once a call that began after
it was made has finished: the ordering guarantees (append before activation,
activation before ack) hold for each caller exactly as if it had gone alone.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ledgerflow.eventlog.errors import RunClosedError
from ledgerflow.eventlog.events import AppendResult, NewEvent
from ledgerflow.eventlog.store import EventLog


@dataclass
class _Pending:
    batches: list[tuple[list[NewEvent], asyncio.Future[list[AppendResult]]]] = field(
        default_factory=list
    )


class GroupCommit:
    """Appends to one run made while another is in flight go together in the next call."""

    def __init__(self, store: EventLog) -> None:
        self._store = store
        self._pending: dict[str, _Pending] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def append(self, run_id: str, events: Sequence[NewEvent]) -> list[AppendResult]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[AppendResult]] = loop.create_future()
        pending = self._pending.get(run_id)
        if pending is None:
            pending = self._pending[run_id] = _Pending()
            pending.batches.append((list(events), future))
            # A task, not the caller, drives the run's queue: a cancelled caller must
            # not strand the others waiting behind it.
            task = loop.create_task(self._drain(run_id, pending))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        else:
            pending.batches.append((list(events), future))
        return await asyncio.shield(future)

    async def _drain(self, run_id: str, pending: _Pending) -> None:
        try:
            while pending.batches:
                batches, pending.batches = pending.batches, []
                try:
                    await self._commit(run_id, batches)
                except BaseException:
                    _cancel(f for _, f in batches)
                    raise
        finally:
            del self._pending[run_id]
            _cancel(f for _, f in pending.batches)

    async def _commit(
        self,
        run_id: str,
        batches: list[tuple[list[NewEvent], asyncio.Future[list[AppendResult]]]],
    ) -> None:
        merged = [event for events, _ in batches for event in events]
        try:
            results = await self._store.append(run_id, merged)
        except RunClosedError as exc:
            _fail(batches, exc)  # the same answer for every batch of the run
            return
        except Exception as exc:
            if len(batches) == 1:
                _fail(batches, exc)
                return
            # One batch's illegal transition must not fail its neighbours: alone again.
            for events, future in batches:
                try:
                    alone = await self._store.append(run_id, events)
                except Exception as single:
                    _fail([(events, future)], single)
                else:
                    _resolve(future, alone)
            return
        offset = 0
        for events, future in batches:
            _resolve(future, results[offset : offset + len(events)])
            offset += len(events)


def _resolve(future: asyncio.Future[list[AppendResult]], results: list[AppendResult]) -> None:
    if not future.done():
        future.set_result(results)


def _cancel(futures: Iterable[asyncio.Future[Any]]) -> None:
    """The loop is shutting down under us: waiters must not hang."""
    for future in futures:
        if not future.done():
            future.cancel()


def _fail(
    batches: list[tuple[list[NewEvent], asyncio.Future[list[AppendResult]]]], exc: BaseException
) -> None:
    for _, future in batches:
        if not future.done():
            future.set_exception(exc)


class Coalesced:
    """Calls ``action(key)`` so each caller returns after a call that began after it asked.

    Callers that arrive while a call for the key is running share the single
    call that follows it. Used for run activations: a worker finishing thirty
    steps of one run sends two activations, not thirty, and still acks each
    message only after an activation that covers its outcome.
    """

    def __init__(self, action: Callable[[str], Awaitable[None]]) -> None:
        self._action = action
        self._next: dict[str, asyncio.Future[None]] = {}
        self._running: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def __call__(self, key: str) -> None:
        loop = asyncio.get_running_loop()
        future = self._next.get(key)
        if future is None:
            future = self._next[key] = loop.create_future()
            if key not in self._running:
                self._running.add(key)
                task = loop.create_task(self._drive(key))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        await asyncio.shield(future)

    async def _drive(self, key: str) -> None:
        try:
            while key in self._next:
                future = self._next.pop(key)
                try:
                    await self._action(key)
                except Exception as exc:
                    if not future.done():
                        future.set_exception(exc)
                except BaseException:
                    _cancel([future])
                    raise
                else:
                    if not future.done():
                        future.set_result(None)
        finally:
            self._running.discard(key)
            if key in self._next:  # only when cancelled: a normal exit emptied it
                _cancel([self._next.pop(key)])
