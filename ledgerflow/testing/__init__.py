"""``lf.testing``: check saved run histories against today's workflow code in your tests.

Export a real run once (``ledgerflow runs export RUN_ID > tests/histories/order.jsonl``),
commit it, and replay it in a test::

    from ledgerflow import testing

    def test_order_history_still_replays() -> None:
        testing.replay("tests/histories/order.jsonl", process_order)

An archive from ``ledgerflow runs archive`` (``RUN_ID.jsonl.gz``) replays the same
way: histories are read gzip-compressed or plain, whatever the file is called.

``replay`` raises ``lf.ReplayDivergenceError``, naming the position (``s5``,
``start`` or ``end``), when the code would now do something other than what the
log recorded: exactly what would break that run if it were still in flight when
you deploy. The file format is described in ``scheduler.history``; this module
only re-exports.

For integration tests on real servers, two modules of this package are not
imported here (they need the servers' clients): ``ledgerflow.testing.fleet``
runs worker, scheduler and reconciler processes and always stops them, and
``ledgerflow.testing.namespace`` deletes a namespace's keys, queues and
exchanges afterwards.
"""

from ledgerflow.eventlog.errors import ReplayDivergenceError
from ledgerflow.scheduler.history import (
    History,
    HistoryError,
    HistoryFormatError,
    ReplayResult,
    dump_history,
    load_history,
    replay,
)
from ledgerflow.scheduler.replay import Completed, Continued, Failed

__all__ = [
    "Completed",
    "Continued",
    "Failed",
    "History",
    "HistoryError",
    "HistoryFormatError",
    "ReplayDivergenceError",
    "ReplayResult",
    "dump_history",
    "load_history",
    "replay",
]
