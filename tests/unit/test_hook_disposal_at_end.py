"""A hook the workflow disposes in the very decision that ends its run is still disposed.

Such a decision records none of its commands (a finished run schedules nothing), so
the disposal the code asked for must come with the run's end, like any live hook's:
otherwise the hook stays live in the run's state and in the token index for good
(an agent's approval hook, when the agent's timeout ends the run during the wait).
"""

from __future__ import annotations

import pytest
from ledgerflow.eventlog.events import EventType
from ledgerflow.eventlog.kinds import HookStatus

import ledgerflow as lf

from .helpers import unique_namespace


@lf.workflow(name="unit_hd_dispose_then_end")
async def dispose_then_end() -> int:
    hook = lf.create_hook()
    await lf.sleep(0.05)  # the hook is recorded by an earlier decision
    hook.dispose()
    return 1


@lf.workflow(name="unit_hd_timed_out_in_hook", timeout=0.2)
async def timed_out_in_hook() -> object:
    async with lf.create_hook() as hook:  # the timeout cancels the body inside the block
        return await hook


async def test_a_hook_disposed_as_the_run_ends_is_disposed_once() -> None:
    async with lf.embedded(unique_namespace()) as client:
        for workflow in (dispose_then_end, timed_out_in_hook):
            run = await client.start(workflow)
            try:
                await run.result(timeout=10)
            except lf.WorkflowFailedError as exc:
                assert exc.type_name == "ledgerflow.WorkflowTimeoutError"
            events = await client.events(run.run_id)
            kinds = [e.type for e in events if e.type.value.startswith(("hook_", "run_"))]
            assert kinds[-3:-1] == [EventType.HOOK_CREATED, EventType.HOOK_DISPOSED], kinds
            assert kinds.count(EventType.HOOK_DISPOSED) == 1
            (hook,) = (await client.state(run.run_id)).hooks.values()
            assert hook.status == HookStatus.DISPOSED
            with pytest.raises(lf.HookNotFoundError):
                await client.resume_hook(hook.token, "late")
            replayed = lf.testing.replay(events, workflow, run_id=run.run_id)
            assert replayed.pending == ()
