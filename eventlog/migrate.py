"""Move a namespace from key layout 1 (before Redis Cluster) to layout 2 (``names``).

Layout 1 existed only on a single Redis, where RENAME moves a key between any two
names, so each run's own keys (log, status hash, offloaded values) are renamed
into their shard and its index entries (active, runs, timers, retention, hook
tokens) are rebuilt from its log, as ``runs repair`` does. The old indexes are
deleted last and the layout is recorded at the very end, so a migration cut short
is finished by running it again: the old runs index still lists every run, and
renaming or repairing a run twice changes nothing. Processes refuse a namespace
with layout-1 indexes (``RedisEventStore.adopt_layout``), so nothing writes while
it is half moved; the operator stops them first, and live worker presence keys
make the migration refuse to start.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .derived import repair_run
from .errors import ConfigurationError, InvalidArgumentError
from .names import INDEX_SHARDS, LegacyNames, Names, check_run_id
from .redis_store import RedisEventStore

SCAN_COUNT = 1000


@dataclass
class Migration:
    """What a migration found and did."""

    runs: list[str] = field(default_factory=list)
    repaired: dict[str, list[str]] = field(default_factory=dict)
    """Runs whose derived state was rebuilt, with what the rebuild found different."""
    skipped: dict[str, str] = field(default_factory=dict)
    """Keys that look like runs but are not (a foreign key, an id outside the rule)."""
    deleted_indexes: int = 0
    already: bool = False


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def migrate_namespace(
    store: RedisEventStore,
    *,
    force: bool = False,
    progress: Callable[[str], None] | None = None,
) -> Migration:
    """Migrate ``store``'s namespace to layout 2; ``force`` ignores live worker presence."""
    report = Migration()
    legacy = LegacyNames(store.names.namespace)
    client = store.client
    old_indexes = await store.legacy_keys()
    candidates = await _legacy_runs(store, legacy, report)
    if not old_indexes and not candidates:
        report.already = True
        return report
    if getattr(client, "get_primaries", None) is not None:
        raise ConfigurationError("layout-1 data cannot be on a Redis Cluster: nothing to migrate")
    presence = store.names.worker_presence("*")
    alive = [k async for k in client.scan_iter(match=presence, count=100)]
    if alive and not force:
        raise ConfigurationError(
            f"{len(alive)} worker(s) of namespace {legacy.namespace!r} are alive: stop every "
            "worker, scheduler and reconciler first (or pass --force if those keys are stale)"
        )
    store.use_names(Names(legacy.namespace, INDEX_SHARDS))
    names = store.names
    for run_id in candidates:
        await _move_keys(client, legacy, names, run_id)
        report.runs.append(run_id)
        problems = await repair_run(store, run_id)
        if problems:
            report.repaired[run_id] = problems
        if progress is not None:
            progress(run_id)
    if old_indexes:
        report.deleted_indexes = int(await client.delete(*old_indexes))
    await store.mark_migrated(INDEX_SHARDS)
    return report


async def _legacy_runs(store: RedisEventStore, legacy: LegacyNames, report: Migration) -> list[str]:
    """Every run of layout 1: in its runs index (kept to the end) or with a status hash."""
    found: dict[str, None] = {}
    client = store.client
    for shard in range(legacy.shards):
        key = f"{legacy.namespace}:runs:{shard}"
        async for member, _score in client.zscan_iter(key, count=SCAN_COUNT):
            found[_text(member)] = None
    async for key in client.scan_iter(match=legacy.status_pattern(), count=SCAN_COUNT):
        found[legacy.run_of_status(_text(key))] = None
    runs: list[str] = []
    for run_id in found:
        try:
            runs.append(check_run_id(run_id))
        except InvalidArgumentError as exc:
            report.skipped[run_id] = str(exc)
    return runs


async def _move_keys(client: Any, legacy: LegacyNames, names: Names, run_id: str) -> None:
    """Rename the run's keys into its shard; the status hash last (what a rerun looks for)."""
    digests = await client.smembers(legacy.blob_set(run_id))
    moves = [(legacy.blob(run_id, _text(d)), names.blob(run_id, _text(d))) for d in digests]
    moves += [
        (legacy.blob_set(run_id), names.blob_set(run_id)),
        (legacy.stream(run_id), names.stream(run_id)),
        (legacy.status(run_id), names.status(run_id)),
    ]
    for old, new in moves:
        if await client.exists(old):
            await client.rename(old, new)
