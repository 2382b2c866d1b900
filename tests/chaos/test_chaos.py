"""The reduced chaos run inside ``make test``: every fault kind, nothing lost or duplicated.

36 runs over ~30 s of load and faults, each kind at least once and one RabbitMQ restart.
Purging the queues guarantees the reconciler has something to recover, so
at least one recovery must be logged. The full run is ``make chaos``.
"""

from __future__ import annotations

import pytest

from tests.chaos.driver import FAULT_KINDS, run_chaos
from tests.outages import RABBITMQCTL
from tests.servers import Servers

pytestmark = pytest.mark.integration


@pytest.mark.skipif(RABBITMQCTL is None, reason="rabbitmqctl is not installed here")
async def test_a_reduced_chaos_run_loses_and_duplicates_nothing(
    servers: Servers, namespace: str
) -> None:
    report = await run_chaos(
        servers,
        namespace,
        runs=36,
        duration=34.0,
        seed=20240611,
        fault_every=3.0,
        rabbit_restarts=1,
        result_timeout=120.0,
    )
    print(report.render(verbose=True))
    assert report.runs == 36
    assert not report.lost, report.render()
    assert not report.wrong, report.render()
    assert not report.duplicated, report.render()
    assert not report.crashes, report.render()
    assert report.completed == 36
    assert set(report.faults) == set(FAULT_KINDS), report.faults
    assert report.faults["rabbitmq_restart"] == 1
    if report.purged:
        # Purged messages come back only through the reconciler. (A purge can find the
        # queues empty, as can every other fault miss its moment: then nothing needs it.)
        assert sum(report.recoveries.values()) >= 1, report.render()
