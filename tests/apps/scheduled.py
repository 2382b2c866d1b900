"""A workflow the schedule tests start by schedule, in-process and in CLI processes.

Its schedules are declared in ``scheduled_code`` (only CLI processes import that one):
a declaration here would join the registry of the whole test process, and every
``lf.embedded`` of every other test would then fire it.
"""

from __future__ import annotations

import ledgerflow as lf


@lf.step(name="sched_stamp")
async def stamp(label: str) -> str:
    return f"{label}!"


@lf.workflow(name="sched_tick")
async def tick(label: str) -> str:
    return await stamp(label)
