"""Run the dashboard app with uvicorn inside the caller's event loop.

In-loop (``Server.serve``) rather than ``uvicorn.run`` so the app shares the
loop, and so the connections, of the backends the caller opened, and so a
test can start it on a free port and stop it again. Signals are left to the
caller (the CLI uses the same ``run_until_signalled`` as every other process).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator

import uvicorn
from fastapi import FastAPI

from ledgerflow.eventlog.errors import ConfigurationError


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: whoever runs it decides when it stops."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        """uvicorn's start-up, with a bind failure as a ConfigurationError (exit 2).

        uvicorn logs the cause (address in use, not an address of this host) and
        calls ``sys.exit(3)``, which would end the whole process from inside the
        event loop, with the CLI's code for "servers unreachable".
        """
        try:
            await super().startup(sockets=sockets)
        except SystemExit:
            config = self.config
            raise ConfigurationError(
                f"the dashboard could not listen on {config.host}:{config.port}: the address "
                "is in use or not one of this host's (uvicorn's ERROR line says which)"
            ) from None


class DashboardServer:
    """One uvicorn server; ``port=0`` picks a free port, readable once started."""

    def __init__(self, app: FastAPI, *, host: str = "127.0.0.1", port: int = 0) -> None:
        config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="off")
        self._server = _Server(config)
        self._task: asyncio.Task[None] | None = None

    async def start(self, timeout: float = 10.0) -> None:
        """Serve in the background and return once the port is listening."""
        self._task = asyncio.create_task(self._server.serve())
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not self._server.started:
            if self._task.done():
                self._failed_to_start()
            if loop.time() > deadline:
                raise TimeoutError(f"the dashboard server did not start within {timeout}s")
            await asyncio.sleep(0.02)

    def _failed_to_start(self) -> None:
        assert self._task is not None
        self._task.result()  # raises what stopped it (see _Server.startup)
        raise RuntimeError("the dashboard server stopped before it started")

    async def stop(self) -> None:
        self._server.should_exit = True
        if self._task is not None and not self._task.done():
            await self._task

    @property
    def port(self) -> int:
        """The port actually bound (the one asked for, or the free one found for 0)."""
        for server in self._server.servers:
            for sock in server.sockets:
                return int(sock.getsockname()[1])
        raise RuntimeError("the dashboard server is not listening yet")

    @property
    def url(self) -> str:
        host = self._server.config.host
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"  # listening everywhere; this address at least works locally
        return f"http://{host}:{self.port}"
