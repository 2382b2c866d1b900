"""``APP`` of the schedule tests' CLI processes: ``scheduled``'s workflow, declared schedules.

Never imported by the test process itself (see ``scheduled``).
"""

from __future__ import annotations

import datetime as dt

import ledgerflow as lf
from tests.apps.scheduled import tick

EVERY_2S = "every-2s"

# Catch up generously: a scheduler killed while it holds the claim leaves the tick to the
# lease (30 s), and the test wants every tick fired all the same, each once.
lf.schedule(
    tick,
    every=dt.timedelta(seconds=2),
    args=[EVERY_2S],
    name=EVERY_2S,
    catch_up=50,
    overlap="allow",
)
