"""A loopback TCP proxy a test can cut or freeze: a server node dying, seen from a client.

Put in front of the shared RabbitMQ (127.0.0.1:5672), two proxies look like two
nodes of one cluster to a client given both URLs; closing one is that node dying
(every connection through it reset, nothing listening any more) without touching
the server other tests use. ``freeze`` stops forwarding one direction, so a
publish can be caught in flight: sent but never received, or received but its
confirm never delivered.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Literal

Direction = Literal["to_server", "to_client"]


class TcpProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._frozen: set[Direction] = set()
        self.connections = 0

    async def start(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def url(self, user: str = "guest", password: str = "guest") -> str:
        return f"amqp://{user}:{password}@127.0.0.1:{self.port}/"

    def freeze(self, direction: Direction) -> None:
        """Stop forwarding bytes going one way (they are dropped, as by a dead peer)."""
        self._frozen.add(direction)

    async def kill(self) -> None:
        """Stop listening and reset every connection through the proxy: the node is gone."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for writer in list(self._writers):
            transport = writer.transport
            transport.abort()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._writers |= {writer, up_writer}
        for task in (
            asyncio.create_task(self._pipe(reader, up_writer, "to_server")),
            asyncio.create_task(self._pipe(up_reader, writer, "to_client")),
        ):
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, direction: Direction
    ) -> None:
        try:
            while data := await reader.read(65536):
                if direction in self._frozen:
                    continue
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            self._writers.discard(writer)
            with contextlib.suppress(Exception):
                writer.transport.abort()
