"""``ledgerflow dashboard``: a read-only web view of runs, their timelines and the dead queue.

Split by job: ``jsonsafe`` turns decoded payloads into JSON, ``queries`` reads the
event store and the broker into plain dicts, ``app`` serves them (FastAPI) with one
static page. Nothing here writes to a run's log; the only broker call is
``Broker.peek_dead``, which leaves the dead queue as it was.

FastAPI and uvicorn are an optional extra (``pip install 'ledgerflow[dashboard]'``),
so this package imports them only in ``app``.
"""
