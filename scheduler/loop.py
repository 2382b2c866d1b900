"""A private asyncio event loop that makes workflow code deterministic.

It only runs ready callbacks, in FIFO order, and only when the scheduler asks.
There is no I/O, no thread hand-off and no real timer: anything that would
need one raises NonDeterminismError naming the call, because its outcome could
differ on replay. Workflow code still sees a normal asyncio world (tasks,
futures, ``asyncio.gather``), so it can be written as plain ``async def``.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections import deque
from collections.abc import Callable, Coroutine, Generator
from typing import Any, NoReturn, TypeVar

from ledgerflow.eventlog.errors import NonDeterminismError

from . import sandbox, watchdog

T = TypeVar("T")

_set_running = asyncio.events._set_running_loop
_get_running = asyncio.events._get_running_loop


def _forbidden(call: str, instead: str) -> NoReturn:
    raise NonDeterminismError(
        f"{call} is not allowed inside workflow code: it cannot be replayed "
        f"deterministically; {instead}"
    )


class DeterministicLoop(asyncio.AbstractEventLoop):
    def __init__(self, clock: Callable[[], float]) -> None:
        self._ready: deque[asyncio.Handle] = deque()
        self._clock = clock
        self._closed = False
        self._running = False
        self.errors: list[dict[str, Any]] = []

    # --- the part workflow code uses ---------------------------------------------------

    def call_soon(  # type: ignore[override]
        self,
        callback: Callable[..., object],
        *args: Any,
        context: contextvars.Context | None = None,
    ) -> asyncio.Handle:
        handle = asyncio.Handle(callback, args, self, context)
        self._ready.append(handle)
        return handle

    def create_future(self) -> asyncio.Future[Any]:
        return asyncio.Future(loop=self)

    def create_task(
        self,
        coro: Coroutine[Any, Any, T] | Generator[Any, None, T],
        *,
        name: str | None = None,
        context: contextvars.Context | None = None,
    ) -> asyncio.Task[T]:
        return asyncio.Task(coro, loop=self, name=name, context=context)

    def time(self) -> float:
        return self._clock()

    def get_debug(self) -> bool:
        return False

    def is_running(self) -> bool:
        return self._running

    def is_closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        self._closed = True
        self._ready.clear()

    def call_exception_handler(self, context: dict[str, Any]) -> None:
        self.errors.append(context)

    def default_exception_handler(self, context: dict[str, Any]) -> None:
        self.errors.append(context)

    # --- driving it -----------------------------------------------------------------------

    def run_ready(self) -> None:
        """Run callbacks until none is ready: the workflow is blocked or done."""
        previous = _get_running()
        _set_running(self)
        self._running = True
        try:
            with sandbox.workflow_code(), watchdog.watching():
                while self._ready:
                    handle = self._ready.popleft()
                    if not handle._cancelled:
                        # Workflow code that called sys.exit(): the task that raised it
                        # holds it and fails the run; the scheduler is not stopped.
                        with contextlib.suppress(SystemExit):
                            handle._run()
        finally:
            self._running = False
            _set_running(previous)

    # --- everything that would make a run unrepeatable -------------------------------

    def call_later(self, *args: Any, **kwargs: Any) -> NoReturn:  # type: ignore[override]
        _forbidden(
            "asyncio.sleep() / asyncio.wait_for() / loop.call_later()",
            "use `await lf.sleep(...)`",
        )

    def call_at(self, *args: Any, **kwargs: Any) -> NoReturn:  # type: ignore[override]
        _forbidden("an asyncio timer (asyncio.timeout, wait_for)", "use lf.sleep / lf.wait_for")

    def call_soon_threadsafe(self, *args: Any, **kwargs: Any) -> NoReturn:  # type: ignore[override]
        _forbidden("a thread hand-off (call_soon_threadsafe)", "do it in a step")

    def run_in_executor(self, *args: Any, **kwargs: Any) -> NoReturn:  # type: ignore[override]
        _forbidden("run_in_executor / asyncio.to_thread", "do blocking work in a step")

    def _io(self, call: str) -> NoReturn:
        _forbidden(call, "do I/O in a step")

    async def create_connection(self, *args: Any, **kwargs: Any) -> NoReturn:
        self._io("a network connection (asyncio.open_connection / loop.create_connection)")

    async def create_server(self, *args: Any, **kwargs: Any) -> NoReturn:
        self._io("a network server")

    async def getaddrinfo(self, *args: Any, **kwargs: Any) -> NoReturn:
        self._io("a DNS lookup")

    async def subprocess_exec(self, *args: Any, **kwargs: Any) -> NoReturn:
        self._io("a subprocess")

    async def subprocess_shell(self, *args: Any, **kwargs: Any) -> NoReturn:
        self._io("a subprocess")

    def add_reader(self, *args: Any, **kwargs: Any) -> NoReturn:  # type: ignore[override]
        self._io("a file-descriptor reader")

    def add_writer(self, *args: Any, **kwargs: Any) -> NoReturn:  # type: ignore[override]
        self._io("a file-descriptor writer")

    async def sock_connect(self, *args: Any, **kwargs: Any) -> NoReturn:
        self._io("a socket")

    async def sock_recv(self, *args: Any, **kwargs: Any) -> NoReturn:
        self._io("a socket")

    async def sock_sendall(self, *args: Any, **kwargs: Any) -> NoReturn:
        self._io("a socket")

    def run_forever(self) -> NoReturn:
        _forbidden("loop.run_forever()", "the scheduler drives this loop")

    def run_until_complete(self, future: Any) -> NoReturn:
        _forbidden("loop.run_until_complete()", "the scheduler drives this loop")
