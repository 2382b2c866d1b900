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
    Names,
    check_queue_name,
    shard_of,
)
from redis.crc import key_slot


def test_default_namespace_names() -> None:
    names = Names()
    assert names.namespace == DEFAULT_NAMESPACE == "ledgerflow"
    assert names.step_queue() == "ledgerflow.steps.default"
    assert names.step_queue("emails") == "ledgerflow.steps.emails"
    assert names.runs_queue == "ledgerflow.runs"
    assert names.dead_queue == "ledgerflow.dead"
    assert names.exchange == "ledgerflow"
    assert names.dead_exchange == "ledgerflow.dlx"
    assert names.hook_tokens() == "ledgerflow:hooks"
    assert names.key_pattern() == "ledgerflow:*"


def test_custom_namespace_prefixes_everything() -> None:
    names = Names("acme-prod_2")
    every = [
        names.stream("r1"),
        names.status("r1"),
        names.active_for("r1"),
        names.timer_for("r1"),
        names.hook_tokens(),
        *names.active_shards(),
        *names.timer_shards(),
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
def test_per_run_keys_share_the_run_hash_tag(run_id: str) -> None:
    names = Names("ns")
    stream, status = names.stream(run_id), names.status(run_id)
    assert stream == f"ns:run:{{{run_id}}}:log"
    assert status == f"ns:run:{{{run_id}}}:status"
    assert stream != status
    for key in (stream, status):
        assert key.count("{") == key.count("}") == 1
    # Redis Cluster hashes only the tag, so both keys live in the run's slot.
    assert key_slot(stream.encode()) == key_slot(status.encode()) == key_slot(run_id.encode())
    assert names.stream(run_id + "x") != stream


def test_shard_is_stable_and_in_range() -> None:
    # crc32, so every process and language agrees; these values must never change.
    assert shard_of("run-1") == 3
    assert shard_of("order-42") == 14
    assert shard_of("") == 0
    ids = [f"run-{i}" for i in range(2000)]
    assert [shard_of(i) for i in ids] == [zlib.crc32(i.encode()) % INDEX_SHARDS for i in ids]
    assert {shard_of(i) for i in ids} == set(range(INDEX_SHARDS))
    assert {shard_of(i, 4) for i in ids} == set(range(4))


def test_sharded_index_names() -> None:
    names = Names("ns")
    assert INDEX_SHARDS == names.shards == 16
    assert names.active_shards() == [f"ns:active:{i}" for i in range(16)]
    assert names.timer_shards() == [f"ns:timers:{i}" for i in range(16)]
    assert names.active_for("run-1") == "ns:active:3"
    assert names.timer_for("order-42") == "ns:timers:14"
    small = Names("ns", shards=4)
    assert len(small.active_shards()) == len(small.timer_shards()) == 4
    for run_id in ("run-1", "order-42", "x", "y"):
        assert small.active_for(run_id) == f"ns:active:{shard_of(run_id, 4)}"
        assert small.active_for(run_id) in small.active_shards()
        assert small.timer_for(run_id) in small.timer_shards()


@pytest.mark.parametrize("queue", ["default", "emails", "high.priority", "q-1_x", "Z"])
def test_valid_step_queue_names(queue: str) -> None:
    assert check_queue_name(queue) == queue
    assert Names().step_queue(queue) == f"ledgerflow.steps.{queue}"


@pytest.mark.parametrize("queue", ["", ".x", "-x", "a b", "a/b", "a:b", "a*", "q\n"])
def test_invalid_step_queue_names_are_refused(queue: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        Names().step_queue(queue)
    assert repr(queue) in str(info.value)
