"""Every Redis key, stream, queue and exchange name, built in one place.

Names are derived from a namespace so that two deployments, or two tests, can
share one Redis and one RabbitMQ without seeing each other. A run's own keys
(its stream and status hash) share the ``{run_id}`` hash tag; the global indexes
are split into a fixed number of shards so no single key is hot. (The append
script touches both a run's keys and index shards, so on Redis Cluster these do
not yet share one slot: that is the clusters issue's key layout.)
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass

from .errors import ConfigurationError, InvalidArgumentError

DEFAULT_NAMESPACE = "ledgerflow"
DEFAULT_STEP_QUEUE = "default"
INDEX_SHARDS = 16

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
HOOK_TOKEN_LUA_PATTERN = "^[!-{}~]+$"  # 0x21-0x7b, 0x7d, 0x7e: the same set

# Correlation ids (s1, s2, ...) of steps, waits and hooks: also in timer members and
# hash field names. ASCII, so a length means the same to Python and to Lua (bytes).
MAX_CORR = 64
CORR_CHARS = HOOK_TOKEN_CHARS
CORR_RE = re.compile(rf"^[\x21-\x7b\x7d\x7e]{{1,{MAX_CORR}}}\Z")
CORR_LUA_PATTERN = HOOK_TOKEN_LUA_PATTERN


def check_run_id(run_id: object) -> str:
    """The one run-id rule, applied wherever a run id comes in (API, CLI, queue, append)."""
    if isinstance(run_id, str) and RUN_ID_RE.match(run_id):
        return run_id
    raise InvalidArgumentError(
        f"invalid run id {_shown(run_id)}: use 1-{MAX_RUN_ID} characters, {RUN_ID_CHARS}"
    )


def check_hook_token(token: object) -> str:
    """The one hook-token rule (lf.create_hook, resume_hook, ledgerflow hooks resume)."""
    if isinstance(token, str) and HOOK_TOKEN_RE.match(token):
        return token
    raise InvalidArgumentError(
        f"invalid hook token {_shown(token)}: use 1-{MAX_HOOK_TOKEN} characters, {HOOK_TOKEN_CHARS}"
    )


def check_corr(corr: object) -> str:
    """A step/wait/hook id as a queue message or timer entry carries it."""
    if isinstance(corr, str) and CORR_RE.match(corr):
        return corr
    raise InvalidArgumentError(
        f"invalid step/wait/hook id {_shown(corr)}: use 1-{MAX_CORR} characters, {CORR_CHARS}"
    )


def _shown(value: object) -> str:
    """A hostile value in an error message: escaped and cut short."""
    text = repr(value)
    if len(text) <= 80:
        return text
    size = len(value) if isinstance(value, str) else len(text)
    return f"{text[:60]}... ({size} characters)"


def check_queue_name(queue: str) -> str:
    """Reject queue suffixes that would collide with our own dotted names."""
    if not _QUEUE_RE.match(queue):
        raise ConfigurationError(f"invalid step queue name {queue!r}: use letters, digits, _ - .")
    return queue


def shard_of(run_id: str, shards: int = INDEX_SHARDS) -> int:
    """Stable shard for a run; crc32 so every process and language agrees."""
    return zlib.crc32(run_id.encode()) % shards


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

    # --- Redis: per run (all share the {run_id} hash tag) ----------------------------

    def stream(self, run_id: str) -> str:
        return f"{self.namespace}:run:{{{run_id}}}:log"

    def status(self, run_id: str) -> str:
        return f"{self.namespace}:run:{{{run_id}}}:status"

    def blob(self, run_id: str, digest: str) -> str:
        """One offloaded value of a run (a STRING), named by its sha256 (hex)."""
        return f"{self.namespace}:blob:{{{run_id}}}:{digest}"

    def blob_set(self, run_id: str) -> str:
        """The digests of a run's blobs (a SET), so removing the run finds them all."""
        return f"{self.namespace}:blobs:{{{run_id}}}"

    # --- Redis: global, sharded indexes ---------------------------------------------

    def active_shard(self, shard: int) -> str:
        return f"{self.namespace}:active:{shard}"

    def active_for(self, run_id: str) -> str:
        return self.active_shard(shard_of(run_id, self.shards))

    def active_shards(self) -> list[str]:
        return [self.active_shard(i) for i in range(self.shards)]

    def timer_shard(self, shard: int) -> str:
        return f"{self.namespace}:timers:{shard}"

    def timer_for(self, run_id: str) -> str:
        return self.timer_shard(shard_of(run_id, self.shards))

    def timer_shards(self) -> list[str]:
        return [self.timer_shard(i) for i in range(self.shards)]

    def runs_shard(self, shard: int) -> str:
        """Every run ever created, scored by its creation time (for listing runs)."""
        return f"{self.namespace}:runs:{shard}"

    def runs_for(self, run_id: str) -> str:
        return self.runs_shard(shard_of(run_id, self.shards))

    def runs_shards(self) -> list[str]:
        return [self.runs_shard(i) for i in range(self.shards)]

    def finished_shard(self, shard: int) -> str:
        """Finished runs with no retention of their own, scored by finish time (ms).

        The namespace default retention is applied to this index by the janitor,
        so changing the default applies to runs already finished.
        """
        return f"{self.namespace}:finished:{shard}"

    def finished_for(self, run_id: str) -> str:
        return self.finished_shard(shard_of(run_id, self.shards))

    def finished_shards(self) -> list[str]:
        return [self.finished_shard(i) for i in range(self.shards)]

    def expire_shard(self, shard: int) -> str:
        """Finished runs whose workflow declared a retention, scored by removal due time (ms)."""
        return f"{self.namespace}:expire:{shard}"

    def expire_for(self, run_id: str) -> str:
        return self.expire_shard(shard_of(run_id, self.shards))

    def expire_shards(self) -> list[str]:
        return [self.expire_shard(i) for i in range(self.shards)]

    def worker_presence(self, identity: str) -> str:
        """Exists while the worker ``identity`` (host:pid) is alive; it expires by itself."""
        return f"{self.namespace}:worker:{identity}"

    def hook_tokens(self) -> str:
        return f"{self.namespace}:hooks"

    # The lease and its fencing counter are written by one script: one hash tag, so on
    # a Redis Cluster they share a slot.

    def reconciler_lease(self) -> str:
        return f"{self.namespace}:reconciler:{{{self.namespace}}}:lease"

    def reconciler_fence(self) -> str:
        return f"{self.namespace}:reconciler:{{{self.namespace}}}:fence"

    def barrier(self, key: str) -> str:
        """A durable append's replication barrier beside ``key``: the same hash tag, so the
        same cluster slot. Every durable append rewrites it (with an expiry) so its WAIT
        covers a write even when the script wrote nothing (``eventlog/durability.py``)."""
        start = key.find("{")
        end = key.find("}", start + 1)
        tag = key[start + 1 : end] if start >= 0 and end > start + 1 else key
        return f"{self.namespace}:barrier:{{{tag}}}"

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
