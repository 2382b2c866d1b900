"""The shared stream watcher: an error no reconnect cures reaches its waiters at once."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

pytestmark = pytest.mark.integration


async def test_a_waiter_on_a_key_that_is_not_a_stream_gets_the_error_not_a_hang(
    backends: Any, redis_client: aioredis.Redis
) -> None:
    store, names = backends.store, backends.names
    await redis_client.set(names.stream("not-a-stream"), b"x")  # written around ledgerflow
    with pytest.raises(ResponseError, match="WRONGTYPE"):
        await asyncio.wait_for(store.wait("not-a-stream", "0-0", 30), 10)
    # The watcher serves the next waiter (a fresh reader task).
    waiting = asyncio.create_task(store.wait("other-run", "0-0", 0.5))
    assert await waiting == []
