"""Every Redis key, stream, queue and exchange name, built in one place.

Names are derived from a namespace so that two deployments, or two tests, can
share one Redis and one RabbitMQ without seeing each other.

The key layout is built for Redis Cluster and is the same on a single Redis: a
run belongs to one index shard (crc32 of its id), and every key of the run (its
stream, status hash and offloaded values) and every index shard it is entered in
(active, timers, runs, finished, expire) carries that shard's hash tag. So each
script call touches keys of one slot and stays one atomic call, while the shards
spread the runs over the masters. Each shard's tag is chosen to hash into its own
equal share of the 16,384 slots, so a cluster whose masters own equal slot
ranges (what ``redis-cli --cluster create`` makes) holds an equal share of the
shards when the shard count is a multiple of the master count.

What cannot share a run's slot is designed not to need it: the hook-token
registry is sharded by token and kept by compare-and-set calls beside the append
(see ``redis_store``), the reconciler's lease and fence share a tag of their own,
so do the schedules (``{<ns>:schedules}``: every schedule script touches one slot),
and worker presence keys are single keys. The namespace's meta hash records the
layout version and the shard count, so every process uses the same one.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass
from functools import lru_cache

from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

from .errors import ConfigurationError, InvalidArgumentError

DEFAULT_NAMESPACE = "ledgerflow"
DEFAULT_STEP_QUEUE = "default"
INDEX_SHARDS = 16
"""Shards of a namespace created on a single Redis (a cluster: 16 per master, up to MAX_SHARDS)."""
MAX_SHARDS = 256
LAYOUT_VERSION = 2
"""1: per-run ``{run_id}`` tags and untagged index shards (before Redis Cluster); 2: shard tags."""

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-]*\Z")
_QUEUE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-.]*\Z")

# Run ids go into keys ({run_id} is the Cluster hash tag), timer members and hook
# owners (both "|"-separated), queue messages and terminals: so no "|", "{", "}",
# whitespace or control characters. Child runs are "<parent>.s3"; generated ids are hex.
MAX_RUN_ID = 200
RUN_ID_CHARS = "letters, digits, '_', '.', '-' and ':'"
RUN_ID_RE = re.compile(rf"^[A-Za-z0-9_.:\-]{{1,{MAX_RUN_ID}}}\Z")
RUN_ID_LUA_PATTERN = "^[%w_%.%-:]+$"  # the same set; Redis runs Lua in the C locale

# Hook tokens are chosen by users and typed into command lines: printable ASCII,
# no whitespace, no "|" (the token index stores owners as "run|corr").
MAX_HOOK_TOKEN = 256
HOOK_TOKEN_CHARS = "printable ASCII without spaces or '|'"
HOOK_TOKEN_RE = re.compile(rf"^[\x21-\x7b\x7d\x7e]{{1,{MAX_HOOK_TOKEN}}}\Z")
WEBHOOK_TOKEN_PREFIX = "wh_"
"""Tokens of ``lf.create_webhook`` (random, chosen by ledgerflow) start with this; only
they are resumed through a webhook endpoint, so a hook with a token a caller could guess
(an order id) is never reachable from there. A token of ``lf.create_hook`` may not."""
WEBHOOK_TOKEN_RE = re.compile(r"^wh_[A-Za-z0-9_\-]{32}\Z")
HOOK_TOKEN_LUA_PATTERN = "^[!-{}~]+$"  # 0x21-0x7b, 0x7d, 0x7e: the same set

# Correlation ids (s1, s2, ...) of steps, waits and hooks: also in timer members and
# hash field names. ASCII, so a length means the same to Python and to Lua (bytes).
MAX_CORR = 64
CORR_CHARS = HOOK_TOKEN_CHARS
CORR_RE = re.compile(rf"^[\x21-\x7b\x7d\x7e]{{1,{MAX_CORR}}}\Z")
CORR_LUA_PATTERN = HOOK_TOKEN_LUA_PATTERN


# Names of a run's output streams (``lf.stream(name)``): chosen by step code, typed into
# command lines and URLs, and part of a key: a short identifier.
MAX_OUTPUT_NAME = 64
OUTPUT_NAME_CHARS = "a letter or digit, then letters, digits, '_', '.' and '-'"
OUTPUT_NAME_RE = re.compile(rf"^[A-Za-z0-9][A-Za-z0-9_.\-]{{0,{MAX_OUTPUT_NAME - 1}}}\Z")


# Names of schedules (``lf.schedule``, ``ledgerflow schedules add``): typed into command
# lines, part of a key, and of the run id each tick starts (``sched:<name>:<tick>``), which
# splits on ":" unambiguously because a name holds none.
MAX_SCHEDULE_NAME = MAX_OUTPUT_NAME
SCHEDULE_NAME_CHARS = OUTPUT_NAME_CHARS
SCHEDULE_NAME_RE = OUTPUT_NAME_RE  # the same short identifier


def _checked(value: object, pattern: re.Pattern[str], what: str, most: int, chars: str) -> str:
    """``value`` if it is a string ``pattern`` matches; else one error naming the rule."""
    if isinstance(value, str) and pattern.match(value):
        return value
    raise InvalidArgumentError(f"invalid {what} {_shown(value)}: use 1-{most} characters, {chars}")


def check_schedule_name(name: object) -> str:
    """The one rule for a schedule's name (lf.schedule, the CLI, a stored schedule)."""
    return _checked(name, SCHEDULE_NAME_RE, "schedule name", MAX_SCHEDULE_NAME, SCHEDULE_NAME_CHARS)


def check_output_name(name: object) -> str:
    """The one rule for an output stream's name (lf.stream, client.stream, CLI, HTTP)."""
    return _checked(name, OUTPUT_NAME_RE, "stream name", MAX_OUTPUT_NAME, OUTPUT_NAME_CHARS)


def check_run_id(run_id: object) -> str:
    """The one run-id rule, applied wherever a run id comes in (API, CLI, queue, append)."""
    return _checked(run_id, RUN_ID_RE, "run id", MAX_RUN_ID, RUN_ID_CHARS)


def check_hook_token(token: object) -> str:
    """The one hook-token rule (lf.create_hook, resume_hook, ledgerflow hooks resume)."""
    return _checked(token, HOOK_TOKEN_RE, "hook token", MAX_HOOK_TOKEN, HOOK_TOKEN_CHARS)


def check_corr(corr: object) -> str:
    """A step/wait/hook id as a queue message or timer entry carries it."""
    return _checked(corr, CORR_RE, "step/wait/hook id", MAX_CORR, CORR_CHARS)


def _shown(value: object) -> str:
    """A hostile value in an error message: escaped and cut short."""
    text = repr(value)
    if len(text) <= 80:
        return text
    size = len(value) if isinstance(value, str) else len(text)
    return f"{text[:60]}... ({size} characters)"


MAX_PRIORITY = 3
"""Priorities are 0 (the default) to 3; each above 0 has a lane of its own per step queue."""
_LANE_RE = re.compile(r"\.p([1-9])\Z")


def check_priority(priority: object) -> int:
    """A run's or a step's priority: 0-3, higher dispatched first (InvalidArgumentError)."""
    if (
        isinstance(priority, int)
        and not isinstance(priority, bool)
        and 0 <= priority <= MAX_PRIORITY
    ):
        return priority
    raise InvalidArgumentError(f"invalid priority {_shown(priority)}: use 0-{MAX_PRIORITY}")


def lane(queue: str, priority: int) -> str:
    """The step queue a step of ``priority`` goes to: the queue itself at 0, else its lane.

    Lanes are separate queues (``default.p2``) because this RabbitMQ's quorum queues
    have no message priorities; a worker consumes every lane of its queues and gives a
    free slot to the highest lane's step first (``worker/priority.py``).
    """
    level = max(0, min(priority, MAX_PRIORITY))
    return queue if level == 0 else f"{queue}.p{level}"


def lane_priority(queue: str) -> int:
    """The priority a (short) step queue name stands for: its lane's, or 0."""
    found = _LANE_RE.search(queue)
    return min(int(found.group(1)), MAX_PRIORITY) if found else 0


def lane_base(queue: str) -> str:
    """The step queue a lane belongs to (``default.p2`` -> ``default``)."""
    found = _LANE_RE.search(queue)
    return queue[: found.start()] if found else queue


def check_queue_name(queue: str) -> str:
    """Reject queue suffixes that would collide with our own dotted names."""
    if not _QUEUE_RE.match(queue):
        raise ConfigurationError(f"invalid step queue name {queue!r}: use letters, digits, _ - .")
    return queue


def shard_of(run_id: str, shards: int = INDEX_SHARDS) -> int:
    """Stable shard for a run (or a hook token); crc32 so every process and language agrees."""
    return zlib.crc32(run_id.encode()) % shards


def check_shards(shards: object) -> int:
    if isinstance(shards, int) and not isinstance(shards, bool) and 1 <= shards <= MAX_SHARDS:
        return shards
    raise ConfigurationError(f"invalid shard count {shards!r}: use 1-{MAX_SHARDS}")


@lru_cache(maxsize=64)
def shard_tags(shards: int) -> tuple[str, ...]:
    """The hash tag of each shard: shard i hashes into the i-th equal range of slots.

    Found by trying suffixes (about ``shards`` tries per shard), once per process.
    """
    tags: list[str] = []
    for shard in range(shards):
        low = shard * REDIS_CLUSTER_HASH_SLOTS // shards
        high = (shard + 1) * REDIS_CLUSTER_HASH_SLOTS // shards
        salt = 0
        while True:
            tag = f"{shard}" if salt == 0 else f"{shard}.{salt}"
            if low <= key_slot(tag.encode()) < high:
                break
            salt += 1
        tags.append(tag)
    return tuple(tags)


@dataclass(frozen=True)
class Names:
    """The naming scheme of one namespace."""

    namespace: str = DEFAULT_NAMESPACE
    shards: int = INDEX_SHARDS

    def __post_init__(self) -> None:
        if not _NAME_RE.match(self.namespace):
            raise ConfigurationError(
                f"invalid namespace {self.namespace!r}: use letters, digits, _ and -"
            )
        check_shards(self.shards)

    # --- Redis: the hash tag of each shard --------------------------------------------

    def shard_tag(self, shard: int) -> str:
        """``{tag}``: the part of a key Redis Cluster hashes (see the module docstring)."""
        return "{" + shard_tags(self.shards)[shard] + "}"

    def _in_shard(self, shard: int, rest: str) -> str:
        return f"{self.namespace}:{self.shard_tag(shard)}:{rest}"

    def _of_run(self, run_id: str, rest: str) -> str:
        return self._in_shard(shard_of(run_id, self.shards), rest)

    # --- Redis: per run (in the run's shard) ------------------------------------------

    def stream(self, run_id: str) -> str:
        return self._of_run(run_id, f"run:{run_id}:log")

    def status(self, run_id: str) -> str:
        return self._of_run(run_id, f"run:{run_id}:status")

    def blob(self, run_id: str, digest: str) -> str:
        """One offloaded value of a run (a STRING), named by its sha256 (hex)."""
        return self._of_run(run_id, f"blob:{run_id}:{digest}")

    def blob_set(self, run_id: str) -> str:
        """The digests of a run's blobs (a SET), so removing the run finds them all."""
        return self._of_run(run_id, f"blobs:{run_id}")

    def output(self, run_id: str, name: str) -> str:
        """One output stream of a run (a Redis stream of chunks, ``eventlog/outputs.py``)."""
        return self._of_run(run_id, f"out:{run_id}:{name}")

    def output_set(self, run_id: str) -> str:
        """The run's output streams (a HASH: name -> bytes written), so removal finds them."""
        return self._of_run(run_id, f"outs:{run_id}")

    # --- Redis: sharded indexes (a run's entries are in its own shard) ----------------

    def active_shard(self, shard: int) -> str:
        return self._in_shard(shard, "active")

    def active_for(self, run_id: str) -> str:
        return self.active_shard(shard_of(run_id, self.shards))

    def active_shards(self) -> list[str]:
        return [self.active_shard(i) for i in range(self.shards)]

    def timer_shard(self, shard: int) -> str:
        return self._in_shard(shard, "timers")

    def timer_for(self, run_id: str) -> str:
        return self.timer_shard(shard_of(run_id, self.shards))

    def timer_shards(self) -> list[str]:
        return [self.timer_shard(i) for i in range(self.shards)]

    def runs_shard(self, shard: int) -> str:
        """Every run ever created, scored by its creation time (for listing runs)."""
        return self._in_shard(shard, "runs")

    def runs_for(self, run_id: str) -> str:
        return self.runs_shard(shard_of(run_id, self.shards))

    def runs_shards(self) -> list[str]:
        return [self.runs_shard(i) for i in range(self.shards)]

    def finished_shard(self, shard: int) -> str:
        """Finished runs with no retention of their own, scored by finish time (ms).

        The namespace default retention is applied to this index by the janitor,
        so changing the default applies to runs already finished.
        """
        return self._in_shard(shard, "finished")

    def finished_for(self, run_id: str) -> str:
        return self.finished_shard(shard_of(run_id, self.shards))

    def finished_shards(self) -> list[str]:
        return [self.finished_shard(i) for i in range(self.shards)]

    def expire_shard(self, shard: int) -> str:
        """Finished runs whose workflow declared a retention, scored by removal due time (ms)."""
        return self._in_shard(shard, "expire")

    def expire_for(self, run_id: str) -> str:
        return self.expire_shard(shard_of(run_id, self.shards))

    def expire_shards(self) -> list[str]:
        return [self.expire_shard(i) for i in range(self.shards)]

    def hook_tokens_for(self, token: str) -> str:
        """The registry shard of a hook token (token -> "run|corr"), sharded by the token.

        It cannot share the owning run's slot (a lookup knows only the token), so it
        is never written in the append's atomic call: see ``redis_store``'s hooks.
        """
        return self._in_shard(shard_of(token, self.shards), "hooks")

    def hook_token_shards(self) -> list[str]:
        return [self._in_shard(i, "hooks") for i in range(self.shards)]

    # --- Redis: namespace-wide single keys --------------------------------------------

    def meta(self) -> str:
        """The namespace's layout version and shard count (a hash), written once."""
        return f"{self.namespace}:meta"

    def worker_presence(self, identity: str) -> str:
        """Exists while the worker ``identity`` (host:pid) is alive; it expires by itself."""
        return f"{self.namespace}:worker:{identity}"

    # The lease and its fencing counter are written by one script: one hash tag, so on
    # a Redis Cluster they share a slot.

    def reconciler_lease(self) -> str:
        return f"{self.namespace}:reconciler:{{{self.namespace}}}:lease"

    def reconciler_fence(self) -> str:
        return f"{self.namespace}:reconciler:{{{self.namespace}}}:fence"

    # Schedules share one hash tag of their own, so every schedule script (put, claim,
    # advance, pause, delete) touches one slot; there are few of them (MAX_SCHEDULES).

    def schedules_tag(self) -> str:
        return "{" + f"{self.namespace}:schedules" + "}"

    def schedule(self, name: str) -> str:
        """One schedule (a HASH: its definition and where it stands, ``eventlog/schedules.py``)."""
        return f"{self.namespace}:{self.schedules_tag()}:schedule:{name}"

    def schedule_due(self) -> str:
        """Unpaused schedules by their next tick (a ZSET, ms; a claimed one by its lease's end)."""
        return f"{self.namespace}:{self.schedules_tag()}:due"

    def schedule_names(self) -> str:
        """Every schedule's name (a SET), for listing and the namespace's limit."""
        return f"{self.namespace}:{self.schedules_tag()}:all"

    def barrier(self, key: str) -> str:
        """A durable append's replication barrier beside ``key``: the same hash tag, so the
        same cluster slot. Every durable append rewrites it (with an expiry) so its WAIT
        covers a write even when the script wrote nothing (``eventlog/durability.py``)."""
        start = key.find("{")
        end = key.find("}", start + 1)
        tag = key[start + 1 : end] if start >= 0 and end > start + 1 else key
        return f"{self.namespace}:barrier:{{{tag}}}"

    # Concurrency slots (eventlog/slots.py): each (limit, key) under a tag of its own, so
    # one script call touches one slot; the list of them is a single namespace key.

    def slot_holders(self, slot: str) -> str:
        return f"{self.namespace}:slot:{{{slot}}}:holders"

    def slot_waiting(self, slot: str) -> str:
        return f"{self.namespace}:slot:{{{slot}}}:waiting"

    def slot_messages(self, slot: str) -> str:
        return f"{self.namespace}:slot:{{{slot}}}:messages"

    def slot_info(self, slot: str) -> str:
        return f"{self.namespace}:slot:{{{slot}}}:info"

    def rate_bucket(self, rate: str) -> str:
        """A rate limit's bucket (eventlog/rates.py), under a tag of its own."""
        return f"{self.namespace}:rate:{{{rate}}}"

    def slot_index(self) -> str:
        """Every (limit, key) that has held or parked something (a SET of slot ids)."""
        return f"{self.namespace}:slots"

    def key_pattern(self) -> str:
        """Glob matching every Redis key of this namespace (tests and cleanup only)."""
        return f"{self.namespace}:*"

    # --- RabbitMQ ----------------------------------------------------------------------

    @property
    def exchange(self) -> str:
        return self.namespace

    @property
    def dead_exchange(self) -> str:
        return f"{self.namespace}.dlx"

    def step_queue(self, queue: str = DEFAULT_STEP_QUEUE) -> str:
        return f"{self.namespace}.steps.{check_queue_name(queue)}"

    @property
    def runs_queue(self) -> str:
        return f"{self.namespace}.runs"

    @property
    def dead_queue(self) -> str:
        return f"{self.namespace}.dead"


@dataclass(frozen=True)
class LegacyNames:
    """The keys of layout 1 (before Redis Cluster), read only by ``ledgerflow migrate``.

    A run's keys were tagged by its id and the index shards were untagged, so the
    append touched several slots; layout 1 always had 16 shards.
    """

    namespace: str = DEFAULT_NAMESPACE
    shards: int = INDEX_SHARDS

    def stream(self, run_id: str) -> str:
        return f"{self.namespace}:run:{{{run_id}}}:log"

    def status(self, run_id: str) -> str:
        return f"{self.namespace}:run:{{{run_id}}}:status"

    def status_pattern(self) -> str:
        """Glob for every run's status hash (how migrate finds runs no index lists)."""
        return f"{self.namespace}:run:{{*}}:status"

    def run_of_status(self, key: str) -> str:
        prefix = f"{self.namespace}:run:{{"
        return key[len(prefix) : -len("}:status")]

    def blob_set(self, run_id: str) -> str:
        return f"{self.namespace}:blobs:{{{run_id}}}"

    def blob(self, run_id: str, digest: str) -> str:
        return f"{self.namespace}:blob:{{{run_id}}}:{digest}"

    def indexes(self) -> list[str]:
        """Every index key of layout 1 (rebuilt from the logs, then deleted)."""
        kinds = ("active", "timers", "runs", "finished", "expire")
        return [f"{self.namespace}:{k}:{i}" for k in kinds for i in range(self.shards)] + [
            f"{self.namespace}:hooks"
        ]
