"""Operations: what someone debugging or running ledgerflow in production reaches for.

The event log's core (events, codec, names, transitions, stores) lives in
``ledgerflow.eventlog``; the tools around it live here: Prometheus metrics,
structured-log set-up, fault injection, the reconciler's lease, backlog scans,
the after-the-fact log checker and the terminal timeline, plus the observers
that hook metrics, log binding and faults into the worker and the scheduler.

This package sits just above the core: it imports ``ledgerflow.eventlog`` and
nothing higher, so every layer (broker, worker, scheduler, CLI) may use it.
"""
