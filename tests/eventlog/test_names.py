"""Every key, queue and exchange name comes from one namespace (DESIGN.md, "Names")."""

from __future__ import annotations

import dataclasses
import fnmatch
import zlib

import pytest
from ledgerflow.eventlog.errors import ConfigurationError
from ledgerflow.eventlog.names import (
    DEFAULT_NAMESPACE,
    INDEX_SHARDS,
    MAX_SHARDS,
    LegacyNames,
    Names,
    check_queue_name,
    shard_of,
    shard_tags,
)
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot


def test_default_namespace_names() -> None:
    names = Names()
    assert names.namespace == DEFAULT_NAMESPACE == "ledgerflow"
    assert names.step_queue() == "ledgerflow.steps.default"
    assert names.step_queue("emails") == "ledgerflow.steps.emails"
    assert names.runs_queue == "ledgerflow.runs"
    assert names.dead_queue == "ledgerflow.dead"
    assert names.exchange == "ledgerflow"
    assert names.dead_exchange == "ledgerflow.dlx"
    assert names.hook_tokens_for("tok") == f"ledgerflow:{names.shard_tag(shard_of('tok'))}:hooks"
    assert names.meta() == "ledgerflow:meta"
    assert names.key_pattern() == "ledgerflow:*"


def test_custom_namespace_prefixes_everything() -> None:
    names = Names("acme-prod_2")
    every = [
        names.stream("r1"),
        names.status("r1"),
        names.active_for("r1"),
        names.timer_for("r1"),
        names.hook_tokens_for("t"),
        names.meta(),
        names.reconciler_lease(),
        names.reconciler_fence(),
        *names.active_shards(),
        *names.timer_shards(),
        *names.runs_shards(),
        *names.finished_shards(),
        *names.expire_shards(),
        *names.hook_token_shards(),
    ]
    assert all(name.startswith("acme-prod_2:") for name in every)
    assert all(fnmatch.fnmatchcase(name, names.key_pattern()) for name in every)
    assert not any(fnmatch.fnmatchcase(name, Names("acme").key_pattern()) for name in every)
    assert names.step_queue() == "acme-prod_2.steps.default"
    assert names.runs_queue == "acme-prod_2.runs"
    assert names.dead_queue == "acme-prod_2.dead"
    assert (names.exchange, names.dead_exchange) == ("acme-prod_2", "acme-prod_2.dlx")


@pytest.mark.parametrize("namespace", ["a", "A9", "ledgerflow", "t0123abcd", "my-app_2", "9lives"])
def test_valid_namespaces(namespace: str) -> None:
    assert Names(namespace).namespace == namespace


@pytest.mark.parametrize(
    "namespace",
    ["", "-x", "_x", "a.b", "a:b", "a b", "a{b}", "ns*", "a/b", "ümlaut", "a\n"],
)
def test_invalid_namespaces_are_refused(namespace: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        Names(namespace)
    assert repr(namespace) in str(info.value)


def test_names_are_immutable() -> None:
    names = Names("abc")
    with pytest.raises(dataclasses.FrozenInstanceError):
        names.namespace = "other"  # type: ignore[misc]


@pytest.mark.parametrize("run_id", ["r1", "order-42", "0b3f5c1e-uuid-like", "with:colon"])
def test_a_runs_keys_and_its_index_entries_share_one_slot(run_id: str) -> None:
    """What the append, rewrite and removal scripts touch is one slot (Redis Cluster)."""
    names = Names("ns")
    tag = names.shard_tag(shard_of(run_id))
    keys = [
        names.stream(run_id),
        names.status(run_id),
        names.blob(run_id, "ab" * 32),
        names.blob_set(run_id),
        names.active_for(run_id),
        names.timer_for(run_id),
        names.runs_for(run_id),
        names.finished_for(run_id),
        names.expire_for(run_id),
    ]
    assert names.stream(run_id) == f"ns:{tag}:run:{run_id}:log"
    assert names.status(run_id) == f"ns:{tag}:run:{run_id}:status"
    assert len(set(keys)) == len(keys)
    for key in keys:
        assert key.count("{") == key.count("}") == 1
    assert len({key_slot(key.encode()) for key in keys}) == 1
    assert names.stream(run_id + "x") != names.stream(run_id)
    assert key_slot(names.reconciler_lease().encode()) == key_slot(
        names.reconciler_fence().encode()
    )


def test_shard_is_stable_and_in_range() -> None:
    # crc32, so every process and language agrees; these values must never change.
    assert shard_of("run-1") == 3
    assert shard_of("order-42") == 14
    assert shard_of("") == 0
    ids = [f"run-{i}" for i in range(2000)]
    assert [shard_of(i) for i in ids] == [zlib.crc32(i.encode()) % INDEX_SHARDS for i in ids]
    assert {shard_of(i) for i in ids} == set(range(INDEX_SHARDS))
    assert {shard_of(i, 4) for i in ids} == set(range(4))


@pytest.mark.parametrize("shards", [1, 3, 16, 48, 100, MAX_SHARDS])
def test_each_shard_hashes_into_its_own_equal_share_of_the_slots(shards: int) -> None:
    """So masters with equal slot ranges hold equal numbers of shards."""
    slots = [key_slot(tag.encode()) for tag in shard_tags(shards)]
    for shard, slot in enumerate(slots):
        assert shard * REDIS_CLUSTER_HASH_SLOTS // shards <= slot
        assert slot < (shard + 1) * REDIS_CLUSTER_HASH_SLOTS // shards
    names = Names("ns", shards=shards)
    assert [key_slot(k.encode()) for k in names.active_shards()] == slots
    # Three masters as redis-cli --cluster create makes them: 5461, 5461, 5462 slots.
    if shards % 3 == 0:
        owners = [min(slot // 5461, 2) for slot in slots]
        assert [owners.count(m) for m in range(3)] == [shards // 3] * 3


@pytest.mark.parametrize("shards", [0, -1, MAX_SHARDS + 1, True, 2.0])
def test_shard_counts_out_of_range_are_refused(shards: object) -> None:
    with pytest.raises(ConfigurationError, match="shard count"):
        Names("ns", shards=shards)  # type: ignore[arg-type]


def test_sharded_index_names() -> None:
    names = Names("ns")
    assert INDEX_SHARDS == names.shards == 16
    tags = [names.shard_tag(i) for i in range(16)]
    assert names.active_shards() == [f"ns:{t}:active" for t in tags]
    assert names.timer_shards() == [f"ns:{t}:timers" for t in tags]
    assert names.active_for("run-1") == f"ns:{tags[3]}:active"
    assert names.timer_for("order-42") == f"ns:{tags[14]}:timers"
    small = Names("ns", shards=4)
    assert len(small.active_shards()) == len(small.timer_shards()) == 4
    for run_id in ("run-1", "order-42", "x", "y"):
        assert small.active_for(run_id) == small.active_shard(shard_of(run_id, 4))
        assert small.active_for(run_id) in small.active_shards()
        assert small.timer_for(run_id) in small.timer_shards()


def test_layout_one_names_are_kept_for_the_migration() -> None:
    legacy = LegacyNames("ns")
    assert legacy.stream("r1") == "ns:run:{r1}:log"
    assert legacy.status("r1") == "ns:run:{r1}:status"
    assert legacy.run_of_status(legacy.status("a.s1:x")) == "a.s1:x"
    assert fnmatch.fnmatchcase(legacy.status("r1"), legacy.status_pattern())
    assert not fnmatch.fnmatchcase(Names("ns").status("r1"), legacy.status_pattern())
    assert "ns:runs:15" in legacy.indexes() and "ns:hooks" in legacy.indexes()


@pytest.mark.parametrize("queue", ["default", "emails", "high.priority", "q-1_x", "Z"])
def test_valid_step_queue_names(queue: str) -> None:
    assert check_queue_name(queue) == queue
    assert Names().step_queue(queue) == f"ledgerflow.steps.{queue}"


@pytest.mark.parametrize("queue", ["", ".x", "-x", "a b", "a/b", "a:b", "a*", "q\n"])
def test_invalid_step_queue_names_are_refused(queue: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        Names().step_queue(queue)
    assert repr(queue) in str(info.value)
