"""``ledgerflow dashboard``: a read-only web view of runs, their timelines and the dead queue.

Split by job: ``jsonsafe`` turns decoded payloads into JSON, ``queries`` reads the
event store and the broker into plain dicts, ``app`` serves them (FastAPI) with one
static page. Nothing here writes to a run's log; the dead queue is read as
``ledgerflow dlq list`` reads it, through ``Broker.hold_dead_letters`` (every
message is given back, in order) and ``broker.deadletters.describe``.

FastAPI and uvicorn are an optional extra (``pip install 'ledgerflow[dashboard]'``),
so this package imports them only in ``app``.
"""
