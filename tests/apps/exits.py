"""Step and workflow code that calls sys.exit(): it fails the run, never the process."""

from __future__ import annotations

import sys

import ledgerflow as lf


@lf.step(name="ex_exit", retry=lf.RetryPolicy(max_attempts=2, initial=0.05, jitter=0.0))
async def exit_async(code: int) -> None:
    sys.exit(code)


@lf.step(name="ex_exit_sync", retry=lf.RetryPolicy(max_attempts=1))
def exit_sync(code: int) -> None:
    sys.exit(code)


@lf.step(name="ex_ok")
async def ok(value: int) -> int:
    return value


@lf.workflow(name="ex_step_exits")
async def step_exits(sync: bool) -> str:
    try:
        await (exit_sync(3) if sync else exit_async(3))
    except lf.StepFailedError as exc:
        return f"caught {exc.type_name} after {exc.attempts}"
    return "not reached"


@lf.workflow(name="ex_workflow_exits")
async def workflow_exits() -> int:
    await ok(1)
    sys.exit(4)
