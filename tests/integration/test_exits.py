"""sys.exit() in step or workflow code fails that step or run; every process keeps serving."""

from __future__ import annotations

import pytest

import ledgerflow as lf
from tests.apps import arith, exits

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("sync", [False, True])
async def test_a_step_calling_sys_exit_fails_the_step_not_the_worker(
    running: lf.Client, sync: bool
) -> None:
    run = await running.start(exits.step_exits, sync)
    attempts = 1 if sync else 2
    assert await run.result(timeout=30) == f"caught ledgerflow.ExitCalledError after {attempts}"
    other = await running.start(arith.total, 3)
    assert await other.result(timeout=30) == arith.expected_total(3)


async def test_workflow_code_calling_sys_exit_fails_the_run_not_the_scheduler(
    running: lf.Client,
) -> None:
    run = await running.start(exits.workflow_exits)
    with pytest.raises(lf.WorkflowFailedError) as failed:
        await run.result(timeout=30)
    assert failed.value.type_name.endswith("ExitCalledError")
    assert "called sys.exit(4)" in failed.value.message
    other = await running.start(arith.total, 3)
    assert await other.result(timeout=30) == arith.expected_total(3)
