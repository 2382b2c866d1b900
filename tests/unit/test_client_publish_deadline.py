"""A producer call's activation is bounded by the client's deadline (issue 11, item 9).

In-memory backends with a broker whose activations fail or hang the way
RabbitMQ's do during a restart (a refused publish; a publish waiting for the
robust channel to come back). The real outage is in
tests/integration/test_producer_outage.py.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from ledgerflow.broker import Activation, MemoryBroker
from ledgerflow.eventlog.errors import HookNotFoundError, PublishError
from ledgerflow.scheduler.client import Client
from structlog.testing import capture_logs

from tests.apps import arith
from tests.unit.helpers import stack

NOT_PUBLISHED = "activation not published; the reconciler will send it"


class Outage:
    """Replaces ``publish_activation``: fails ``failures`` times (or hangs), then delivers."""

    def __init__(self, broker: MemoryBroker, *, failures: int = 0, hang: bool = False) -> None:
        self.broker = broker
        self.real = broker.publish_activation
        self.failures = failures
        self.hang = hang
        self.tries = 0

    async def __call__(self, activation: Activation) -> None:
        self.tries += 1
        if self.hang:
            await asyncio.Event().wait()  # as a publish waiting for a reconnect would
        if self.tries <= self.failures:
            raise PublishError("RabbitMQ is restarting")
        await self.real(activation)


def broken(broker: MemoryBroker, **options: Any) -> Outage:
    outage = Outage(broker, **options)
    broker.publish_activation = outage  # type: ignore[method-assign]
    return outage


@pytest.mark.parametrize("hang", [False, True])
async def test_start_returns_its_handle_when_the_broker_stays_away(hang: bool) -> None:
    async with stack(run_worker=False, run_scheduler=False) as s:
        outage = broken(s.broker, failures=10**6, hang=hang)
        client = Client(s.store, s.broker, publish_deadline=0.5)
        with capture_logs() as logs:
            handle = await asyncio.wait_for(client.start(arith.total, 2), 10)
        (warning,) = [line for line in logs if line["event"] == NOT_PUBLISHED]
        assert warning["run_id"] == handle.run_id
        assert warning["recorded"] == "run_created"
        assert warning["log_level"] == "warning"
        assert "PublishError" in warning["error"] or "TimeoutError" in warning["error"]
        assert outage.tries >= 1 if hang else outage.tries > 1  # retried with backoff
        assert (await client.state(handle.run_id)).status == "created"


async def test_a_short_outage_is_ridden_out_without_a_warning() -> None:
    async with stack() as s:
        outage = broken(s.broker, failures=2)
        client = Client(s.store, s.broker, publish_deadline=5.0)
        with capture_logs() as logs:
            handle = await asyncio.wait_for(client.start(arith.total, 2), 10)
            assert await handle.result(timeout=10) == arith.expected_total(2)
        assert outage.tries >= 3  # two refused, then the start's; steps' activations after
        assert NOT_PUBLISHED not in [line["event"] for line in logs]


async def test_validation_errors_still_raise_before_anything_is_recorded() -> None:
    async with stack(run_worker=False, run_scheduler=False) as s:
        broken(s.broker, failures=10**6)
        client = Client(s.store, s.broker, publish_deadline=0.1)
        with pytest.raises(TypeError):
            await client.start(arith.total, 1, 2, 3)
        with pytest.raises(HookNotFoundError):
            await client.resume_hook("no-such-token", 1)


@pytest.mark.parametrize("deadline", [float("nan"), float("inf"), -1.0])
async def test_a_nonsense_deadline_is_refused(deadline: float) -> None:
    async with stack(run_worker=False, run_scheduler=False) as s:
        with pytest.raises(ValueError, match="publish_deadline"):
            Client(s.store, s.broker, publish_deadline=deadline)
