"""Steps that write output streams, for tests of lf.stream and client.stream."""

from __future__ import annotations

import asyncio

import ledgerflow as lf

GATES: dict[str, asyncio.Event] = {}
"""Tag -> an event a step waits on after its first chunk (the test opens it)."""
FAST_RETRY = lf.RetryPolicy(max_attempts=3, initial=0.05, jitter=0.0)


@lf.step
async def talk(n: int, tag: str = "") -> int:
    async with lf.stream("tokens") as out:
        for i in range(n):
            await out.write(f"t{i}")
            if i == 0 and tag:
                await asyncio.wait_for(GATES[tag].wait(), 30)
    return n


@lf.workflow
async def chat(n: int, tag: str = "") -> int:
    return await talk(n, tag)


@lf.step(retry=FAST_RETRY)
async def flaky_talk(n: int) -> str:
    """Attempt 1 writes three chunks, then fails; attempt 2 writes ``n`` and closes."""
    attempt = lf.step_context().attempt
    async with lf.stream("tokens") as out:
        count = 3 if attempt == 1 else n
        for i in range(count):
            await out.write({"attempt": attempt, "i": i})
        if attempt == 1:
            raise lf.RetryableError("the model's connection dropped")
    return f"done on attempt {attempt}"


@lf.workflow
async def flaky_chat(n: int) -> str:
    return await flaky_talk(n)


@lf.step
async def log_lines(prefix: str, n: int) -> None:
    async with lf.stream("log", closes=False) as out:
        for i in range(n):
            await out.write(f"{prefix}{i}")


@lf.workflow
async def two_writers(hold: float) -> str:
    """Two steps append to one stream left open; the run's end (after a sleep) ends it."""
    await log_lines("a", 2)
    await log_lines("b", 2)
    await lf.sleep(hold)
    return "ok"


@lf.step
async def late_writer() -> None:
    async with lf.stream("tokens") as out:
        await out.write("one")
    async with lf.stream("tokens") as out:  # the stream was closed: refused
        await out.write("two")


@lf.workflow
async def write_after_close() -> None:
    await late_writer()


@lf.workflow
async def streams_from_workflow() -> None:
    async with lf.stream("tokens") as out:  # not from a step: a clear error
        await out.write("x")


@lf.step
async def say_all(chunks: list[str]) -> None:
    async with lf.stream("tokens") as out:
        for chunk in chunks:
            await out.write(chunk)


@lf.workflow
async def say(chunks: list[str]) -> None:
    await say_all(chunks)
