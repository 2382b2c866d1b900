"""How one attempt of one step ended, as the delivery that carried it needs to know.

The message is acked when every attempt it carried was recorded or skipped;
the steps the log refused to start go to the dead-letter queue with their
reasons. An enum-tagged record rather than a bare reason string: "no reason"
no longer has to mean "fine", and a new way to end is a new tag mypy follows.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class AttemptEnd(enum.Enum):
    RECORDED = "recorded"
    """The step ran (or was failed as lost) and its outcome is in the log."""
    SKIPPED = "skipped"
    """Not run, rightly: its run had ended, or the step already has its outcome."""
    REFUSED = "refused"
    """Not run: the log refused its step_started (a forged or stale message)."""
    PARKED = "parked"
    """Not run yet: its concurrency limit was full; its message waits in Redis."""


@dataclass(frozen=True, slots=True)
class AttemptResult:
    end: AttemptEnd
    reason: str = ""
    """Why it was refused: the dead-letter reason (empty unless REFUSED)."""

    @property
    def refused(self) -> bool:
        return self.end is AttemptEnd.REFUSED


RECORDED = AttemptResult(AttemptEnd.RECORDED)
SKIPPED = AttemptResult(AttemptEnd.SKIPPED)
PARKED = AttemptResult(AttemptEnd.PARKED)


def refused(reason: str) -> AttemptResult:
    return AttemptResult(AttemptEnd.REFUSED, reason)
