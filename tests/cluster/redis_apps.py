"""The APP of the fleets that run on the Redis Cluster: the chaos shapes and a hook.

Fan-out, chain, sleep and retry come from the chaos suite (their results are
computed without running them, their steps carry short timeouts so a lost outcome
is redriven quickly); the approval workflow waits on a hook.
"""

from __future__ import annotations

from tests.apps.waiting import approval
from tests.chaos.apps import WORKFLOWS, Plan, expected

__all__ = ["WORKFLOWS", "Plan", "approval", "expected"]
