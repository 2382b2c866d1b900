"""Offloaded values fetched for what a replay hands to workflow code.

The log carries a reference (``eventlog.blobs``) where a large value was; the workflow
must see the value. Only events whose values the replay delivers are resolved: step
results, hook payloads and the run's arguments. A step_created's arguments are never
fetched here (replay matches calls by position and name; the worker fetches them),
nor is the run's own recorded result. A cached instance is fed only new events, so a
blob is fetched again only after a cache miss, and then mostly from ``BlobCache``.
"""

from __future__ import annotations

from collections.abc import Sequence

from ledgerflow.eventlog.blobs import Fetch, has_refs, resolve
from ledgerflow.eventlog.events import Event, EventType

DELIVERED = frozenset({EventType.STEP_COMPLETED, EventType.HOOK_RECEIVED, EventType.RUN_CREATED})
"""Event types whose data reaches workflow code during a replay."""


async def delivered_values(events: Sequence[Event], fetch: Fetch) -> list[Event]:
    """``events`` with the references in what replay delivers replaced by their values.

    A reference that cannot be resolved raises ``BlobError`` (a SerializationError):
    the caller treats it like any undecodable event, never as a value.
    """
    out: list[Event] = []
    for event in events:
        if event.type in DELIVERED and has_refs(event.data):
            data = await resolve(event.data, fetch)
            event = Event(
                id=event.id, type=event.type, corr=event.corr, data=data, ts=event.ts, v=event.v
            )
        out.append(event)
    return out
