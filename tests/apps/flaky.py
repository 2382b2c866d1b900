"""Steps that fail, hang or stall on purpose, for the retry and timeout tests.

Attempts are counted in Redis (not memory), so the counts hold when the step
runs in a worker subprocess or moves from one worker to another.
"""

from __future__ import annotations

import asyncio
import os

from ledgerflow.eventlog.redis_client import redis_client

import ledgerflow as lf

FAST = lf.RetryPolicy(max_attempts=4, initial=0.1, backoff=2.0, jitter=0.0)


async def count_attempt(label: str) -> int:
    """How many times this step's body has started (across processes), this one included.

    ``label`` is a Redis key inside the test's namespace, so the test cleans it up.
    """
    client = redis_client(os.environ.get("LEDGERFLOW_REDIS_URL", "redis://127.0.0.1:6379/0"))
    try:
        count = int(await client.incr(label))
        await client.expire(label, 600)
        return count
    finally:
        await client.aclose()


@lf.step(name="fl_fails_twice", retry=FAST)
async def fails_twice(label: str) -> str:
    attempt = lf.step_context().attempt
    if await count_attempt(label) <= 2:
        raise ConnectionError(f"flaky API on attempt {attempt}")
    return f"ok on attempt {attempt}"


@lf.step(name="fl_rate_limited", retry=FAST)
async def rate_limited(label: str, retry_after: float) -> str:
    if await count_attempt(label) == 1:
        raise lf.RetryableError("rate limited", retry_after=retry_after)
    return "served"


@lf.step(name="fl_fatal", retry=FAST)
async def fatal(label: str) -> None:
    await count_attempt(label)
    raise lf.FatalError("card stolen")


@lf.step(
    name="fl_bad_input",
    retry=lf.RetryPolicy(max_attempts=4, initial=0.05, non_retryable=(ValueError,)),
)
async def bad_input(label: str) -> None:
    await count_attempt(label)
    raise ValueError("not a number")


@lf.step(name="fl_always_fails", retry=lf.RetryPolicy(max_attempts=3, initial=0.05, jitter=0))
async def always_fails(label: str) -> None:
    await count_attempt(label)
    raise RuntimeError("still broken")


@lf.step(name="fl_hangs_once", timeout=0.5, retry=FAST)
async def hangs_once(label: str) -> str:
    if await count_attempt(label) == 1:
        await asyncio.sleep(3600)
    return "finished"


async def work_heartbeating(seconds: float) -> None:
    """Busy for ``seconds``, calling lf.heartbeat() every 50 ms."""
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    while loop.time() < end:
        lf.heartbeat()
        await asyncio.sleep(0.05)


@lf.step(name="fl_heartbeats", heartbeat_timeout=0.5, retry=FAST)
async def heartbeats(label: str, seconds: float) -> str:
    """Works for longer than its heartbeat timeout, heartbeating all along."""
    await count_attempt(label)
    await work_heartbeating(seconds)
    return "alive"


@lf.step(name="fl_stalls_once", heartbeat_timeout=0.5, retry=FAST)
async def stalls_once(label: str) -> str:
    """First attempt stops heartbeating (but keeps running); later ones finish."""
    if await count_attempt(label) == 1:
        lf.heartbeat()
        await asyncio.sleep(3600)
    return "recovered"


@lf.step(name="fl_slow", retry=FAST)
async def slow(label: str, seconds: float) -> str:
    await count_attempt(label)
    await asyncio.sleep(seconds)
    return f"slept {seconds}"


@lf.step(name="fl_slow_heartbeat", heartbeat_timeout=1.0, retry=FAST)
async def slow_heartbeat(label: str, seconds: float) -> str:
    await count_attempt(label)
    await work_heartbeating(seconds)
    return "done"


@lf.workflow(name="fl_one")
async def one(step: str, label: str, *args: object) -> object:
    """Run one step of this module by registered name."""
    return await STEPS[step](label, *args)


@lf.workflow(name="fl_catching")
async def catching(label: str) -> str:
    try:
        await always_fails(label)
    except lf.StepFailedError as exc:
        return f"gave up after {exc.attempts}: {exc.type_name}: {exc.message}"
    return "not reached"


@lf.workflow(name="fl_many_slow")
async def many_slow(label: str, n: int, seconds: float) -> list[str]:
    return list(await asyncio.gather(*(slow(f"{label}-{i}", seconds) for i in range(n))))


@lf.step(name="fl_keyed", retry=FAST)
async def keyed(label: str) -> list[str]:
    """Fails twice, recording the idempotency key each attempt saw."""
    client = redis_client(os.environ.get("LEDGERFLOW_REDIS_URL", "redis://127.0.0.1:6379/0"))
    try:
        await client.rpush(f"{label}:keys", lf.step_context().idempotency_key)
        await client.expire(f"{label}:keys", 600)
        seen = [k.decode() for k in await client.lrange(f"{label}:keys", 0, -1)]
    finally:
        await client.aclose()
    if len(seen) < 3:
        raise ConnectionError("try again")
    return seen


@lf.workflow(name="fl_keyed_wf")
async def keyed_workflow(label: str) -> list[str]:
    return await keyed(label)


@lf.step(name="fl_kills_worker", retry=lf.RetryPolicy(max_attempts=3, initial=0.05))
async def kills_worker(label: str) -> None:
    """Takes its whole worker process down, every time (a segfaulting C library, say)."""
    await count_attempt(label)
    os._exit(70)


@lf.step(name="fl_shouts", retry=FAST)
async def shouts(label: str, size: int) -> None:
    """Fails every attempt with a message of ``size`` characters (start and end marked)."""
    await count_attempt(label)
    raise ValueError("START" + "x" * (size - 8) + "END")


@lf.workflow(name="fl_shouting")
async def shouting(size: int) -> None:
    """The workflow itself raises a message of ``size`` characters."""
    raise RuntimeError("START" + "y" * (size - 8) + "END")


STEPS = {
    "fails_twice": fails_twice,
    "rate_limited": rate_limited,
    "fatal": fatal,
    "bad_input": bad_input,
    "hangs_once": hangs_once,
    "heartbeats": heartbeats,
    "stalls_once": stalls_once,
    "slow": slow,
    "slow_heartbeat": slow_heartbeat,
    "kills_worker": kills_worker,
    "shouts": shouts,
}
