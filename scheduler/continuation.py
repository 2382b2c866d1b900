"""``lf.continue_as_new``: end a run whose history grows without end, go on in a fresh one.

A workflow that loops forever (over a hook, a poller) would grow its log without
bound, and every cache miss replays all of it. Continuing as new ends this run
and starts a linked run of the same workflow with the given arguments and an
empty history. Its id is derived from the old one (``continuation_run_id``), so a
crash between the two writes, or a second replay of the same log, starts the
same run again, which the append answers as a duplicate.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any, NoReturn

from ledgerflow.eventlog.errors import LedgerflowError
from ledgerflow.eventlog.names import MAX_RUN_ID

from .context import current_instance

SEPARATOR = ":c"
"""``<root>:c<n>`` is the n-th run of a chain (the first run keeps the id it was given)."""
_LINK = re.compile(r"^(.*):c([1-9][0-9]{0,8})\Z")


class ContinueAsNew(BaseException):
    """Raised by ``lf.continue_as_new`` to unwind the workflow's code to its end.

    A BaseException, like ``asyncio.CancelledError``, so a workflow's own
    ``except Exception`` cannot swallow it; the replay reads it off the finished
    task as the run's outcome.
    """

    def __init__(self, args: list[Any], kwargs: dict[str, Any]) -> None:
        super().__init__("continue as new")
        self.call_args = args
        self.call_kwargs = kwargs


def continue_as_new(*args: Any, **kwargs: Any) -> NoReturn:
    """End this run and start a new run of the same workflow with these arguments.

    The new run's log starts empty (only its run_created, which names this run as
    ``continued_from``); this run ends with run_completed naming the new one
    (``continued_as``). ``handle.result()`` on any run of the chain, and a parent
    awaiting it as a child, get the result of the chain's last run. Arguments
    that do not fit the workflow's signature raise here, in the workflow.
    """
    instance = current_instance.get()
    if instance is None:
        raise LedgerflowError("lf.continue_as_new() can only be used inside a workflow")
    instance.definition.check_args(args, kwargs)
    raise ContinueAsNew(list(args), dict(kwargs))


def continuation_run_id(run_id: str) -> str:
    """The id of the run that continues ``run_id``: deterministic, within the run-id rule.

    ``order-7`` continues as ``order-7:c1``, which continues as ``order-7:c2``. An
    id that would outgrow ``MAX_RUN_ID`` gets a digest of the old id as its root
    instead: still a function of the old id alone, and short from then on.
    """
    match = _LINK.match(run_id)
    root, link = (match.group(1), int(match.group(2))) if match else (run_id, 0)
    natural = f"{root}{SEPARATOR}{link + 1}"
    if len(natural) <= MAX_RUN_ID:
        return natural
    digest = hashlib.sha256(run_id.encode()).hexdigest()[:32]
    return f"{digest}{SEPARATOR}{link + 1}"
