"""``@lf.workflow(concurrency=lf.Concurrency(...))``: at most N active runs per key.

The same slots as steps' limits (``eventlog/slots.py``), with runs as members.
A run takes its key's slot before the scheduler records its start; one that
finds the slots full parks its activation and the activation is acked, so the
run waits created, holding no queue message and no scheduler. A run holds its
slot until it ends, however long: its slot has no lease to renew. The scheduler
that records the end releases it and publishes the activations of the runs let
in; a run that ended elsewhere (cancelled by a client, failed over its history
limit) is found by the reconciler's sweep (``release_ended``), which releases
it. So a slot is held no longer than one sweep past its run's end.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import structlog
from ledgerflow.broker import Activation, Broker
from ledgerflow.broker.messages import encode_message
from ledgerflow.eventlog.kinds import RUN_TERMINAL_STATES
from ledgerflow.eventlog.slots import SlotKind, Slots
from ledgerflow.eventlog.store import RunIndex
from ledgerflow.worker.concurrency import Concurrency, send_promoted

from .registry import WorkflowDef

log = structlog.get_logger("ledgerflow.runlimits")

RUN_LEASE_MS = 100 * 365 * 86_400_000
"""A run's slot does not expire: its end releases it (or the sweep, seeing it ended)."""


class RunLimitStore(Slots, RunIndex, Protocol):
    """What run limits use: the slots, and run states for the sweep."""


async def take_run_slot(
    store: Slots,
    broker: Broker,
    definition: WorkflowDef,
    run_id: str,
    args: list[object],
    kwargs: dict[str, object],
) -> bool:
    """True if the run may start now; False if it was parked until a slot frees up.

    A key that cannot be computed from the run's arguments starts the run under the
    key "" (a broken key function must not keep runs from ever starting); logged.
    """
    limit = definition.concurrency
    if limit is None or limit.name is None:
        return True
    key = run_key(limit, definition, run_id, args, kwargs)
    parked = encode_message(Activation(run_id=run_id, reason="concurrency slot"))
    granted, promoted = await store.acquire_slot(
        limit.name, key, run_id, limit.limit, RUN_LEASE_MS, parked, SlotKind.RUN
    )
    await send_promoted(broker, promoted)
    if not granted:
        log.info("run waits for a concurrency slot", run_id=run_id, limit=limit.name, key=key)
    return granted


async def free_run_slot(
    store: Slots,
    broker: Broker,
    definition: WorkflowDef,
    run_id: str,
    args: list[object],
    kwargs: dict[str, object],
) -> None:
    limit = definition.concurrency
    if limit is None or limit.name is None:
        return
    key = run_key(limit, definition, run_id, args, kwargs)
    promoted = await store.release_slot(limit.name, key, run_id, limit.limit, RUN_LEASE_MS)
    await send_promoted(broker, promoted)


def run_key(
    limit: Concurrency,
    definition: WorkflowDef,
    run_id: str,
    args: Sequence[object],
    kwargs: dict[str, object],
) -> str:
    try:
        return limit.key_of(definition.signature, list(args), dict(kwargs))
    except Exception as exc:
        log.warning(
            "concurrency key of a run could not be computed; using the empty key",
            run_id=run_id,
            limit=limit.name,
            error=f"{type(exc).__name__}: {exc}",
        )
        return ""


async def release_ended(store: RunLimitStore, broker: Broker, lease_ms: int) -> int:
    """The sweep's part: release the slots of runs that ended (or were removed); how many."""
    holders = await store.run_slot_holders()
    if not holders:
        return 0
    states = await store.run_states([run_id for _, _, run_id, _ in holders])
    released = 0
    for limit, key, run_id, capacity in holders:
        state = states.get(run_id, "")
        if state in RUN_TERMINAL_STATES or not state:
            promoted = await store.release_slot(limit, key, run_id, max(capacity, 1), lease_ms)
            await send_promoted(broker, promoted)
            released += 1
    return released
