"""The event store interface both stores implement (and one conformance suite tests)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

from .events import AppendResult, Event, NewEvent
from .names import Names

START = "0-0"


class EventStore(ABC):
    """Append-only per-run logs plus the derived indexes the append keeps in step."""

    names: Names

    @abstractmethod
    async def append(self, run_id: str, events: Sequence[NewEvent]) -> list[AppendResult]:
        """Check and append a batch atomically: all written (or duplicate), or none.

        Raises IllegalTransitionError (or RunClosedError / RunNotFoundError)
        naming the run, entity and states; nothing is written then.
        """

    @abstractmethod
    async def read(self, run_id: str, after: str = START, count: int | None = None) -> list[Event]:
        """Events strictly after the id ``after``, in log order."""

    @abstractmethod
    async def wait(self, run_id: str, after: str, timeout: float) -> list[Event]:
        """Block until events exist after ``after`` or ``timeout`` seconds pass."""

    @abstractmethod
    async def status(self, run_id: str) -> dict[str, str]:
        """The run's status hash: a cache of the fold, never the truth."""

    @abstractmethod
    async def active_runs(self, shard: int, limit: int = 1000) -> list[tuple[str, int]]:
        """(run_id, last progress ms) of unfinished runs in one index shard, oldest first."""

    @abstractmethod
    async def close(self) -> None: ...

    async def exists(self, run_id: str) -> bool:
        return bool((await self.status(run_id)).get("run"))

    async def __aenter__(self) -> EventStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
