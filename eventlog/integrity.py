"""What an append may carry, defined once for the Lua script and the in-memory store.

Redis does not roll a script back: an append that writes three events and then
trips over a bad fourth argument leaves three written. So the append script
checks every argument of a batch in a first pass, before any write, and the
memory store applies the same checks here in Python; the Lua is rendered from
the constants below, so a limit is written once. A refused batch answers
``badarg`` naming the event (1-based, as in the script) and the field.

Also here: the fingerprint of a step call (its registered name and encoded
arguments). The scheduler records it with step_created; a worker's
step_started carries the fingerprint of the message it received, and the
append refuses a mismatch, so a forged or corrupted step message never runs.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from typing import NamedTuple

from .delays import MAX_DELAY_MS, MAX_DUE_MS
from .errors import AppendArgumentError, HookTokenConflictError
from .events import EventType, NewEvent
from .names import (
    CORR_LUA_PATTERN,
    CORR_RE,
    HOOK_TOKEN_LUA_PATTERN,
    HOOK_TOKEN_RE,
    MAX_CORR,
    MAX_HOOK_TOKEN,
    MAX_RUN_ID,
    RUN_ID_LUA_PATTERN,
    RUN_ID_RE,
)
from .retention import MAX_RETENTION_MS, MIN_RETENTION_MS
from .timers import TimerKind

WIDTH = 8
"""ARGV slots per event: type, corr, attempt, data, key, timer member, timer due, retention."""
MAX_ATTEMPT = 2**31 - 1
MAX_KEY = 512
"""The key slot: a workflow name (run_created), a token (hook_created), a fingerprint."""
FINGERPRINT_LEN = 32

# What the key slot holds for these event types (bounded by MAX_KEY for every type).
KEY_WORKFLOW, KEY_TOKEN, KEY_FINGERPRINT = "workflow", "token", "fingerprint"
KEY_ROLE = {
    EventType.RUN_CREATED: KEY_WORKFLOW,
    EventType.HOOK_CREATED: KEY_TOKEN,
    EventType.STEP_CREATED: KEY_FINGERPRINT,
    EventType.STEP_STARTED: KEY_FINGERPRINT,
}

_ATTEMPT_RE = re.compile(r"^[0-9]{1,10}\Z")
_DUE_DIGITS_RE = re.compile(r"^[0-9]{1,15}\Z")
_FINGERPRINT_RE = re.compile(rf"^[0-9a-f]{{{FINGERPRINT_LEN}}}\Z")
_MEMBER_RE = re.compile(r"^([a-z]+)\|([^|]+)\|([^|]+)\|([0-9]{1,10})\|([0-9]{1,15})\Z")
_TIMER_KINDS = frozenset(k.value for k in TimerKind)
# A stream entry id (``based_on``): 19 digits each side stays below Redis's 64-bit parts.
ENTRY_ID_RE = re.compile(r"^[0-9]{1,19}-[0-9]{1,19}\Z")
ENTRY_ID_LUA_PATTERN = "^%d+%-%d+$"
_ENTRY_ID_RULE = "a stream entry id: 1-19 digits, '-', 1-19 digits"
_RUN_ID_RULE = f"use 1-{MAX_RUN_ID} characters: letters, digits, _ . - :"
_RETENTION_RULE = f"empty, or for run_created ms from {MIN_RETENTION_MS} to {MAX_RETENTION_MS}"
_CORR_RULE = f"use 1-{MAX_CORR} printable ASCII characters, no spaces or |"


def call_fingerprint(step_name: str, args: bytes) -> str:
    """The fingerprint of a step call: what step_created records and step_started must match."""
    digest = hashlib.sha256(step_name.encode("utf-8", "surrogatepass") + b"\0" + args)
    return digest.hexdigest()[:FINGERPRINT_LEN]


class Wire(NamedTuple):
    """One event's script arguments, except its data (opaque to the checks)."""

    type: str
    corr: str
    attempt: str
    key: str
    member: str
    due: str
    retention: str = ""  # run_created: the run's own retention in ms ("" for the default)


def wire(event: NewEvent) -> Wire:
    return Wire(
        event.type.value,
        event.corr,
        "" if event.attempt is None else str(event.attempt),
        event.workflow or event.token or event.fingerprint,
        event.timer.member if event.timer is not None else "",
        event.timer_due,
        "" if event.retention_ms is None else str(event.retention_ms),
    )


def check_batch(run_id: str, events: Sequence[Wire]) -> None:
    """Raise AppendArgumentError for the first bad argument: what the script's first pass does."""
    if not isinstance(run_id, str) or not RUN_ID_RE.match(run_id):
        raise AppendArgumentError(str(run_id)[:MAX_RUN_ID], "batch", "run_id", "", _RUN_ID_RULE)
    for i, w in enumerate(events, 1):
        problem = _problem(run_id, w)
        if problem is not None:
            field, detail = problem
            raise AppendArgumentError(run_id, f"event {i}", field, w.type, detail)


def check_based_on(run_id: str, based_on: str) -> None:
    """Raise AppendArgumentError unless ``based_on`` is an entry id the script can look up."""
    if not isinstance(based_on, str) or not ENTRY_ID_RE.match(based_on):
        raise AppendArgumentError(run_id, "batch", "based_on", "", _ENTRY_ID_RULE)


def _problem(run_id: str, w: Wire) -> tuple[str, str] | None:
    try:
        kind = EventType(w.type).kind
    except ValueError:
        return "type", "unknown event type"
    if kind == "run" and w.corr != "":
        return "corr", "must be empty for a run event"
    if kind != "run" and not CORR_RE.match(w.corr):
        return "corr", _CORR_RULE
    if w.attempt != "" and not (_ATTEMPT_RE.match(w.attempt) and int(w.attempt) <= MAX_ATTEMPT):
        return "attempt", f"empty or an integer from 0 to {MAX_ATTEMPT}"
    key = _key_problem(w)
    if key is not None:
        return "key", key
    if w.retention != "" and not (
        w.type == EventType.RUN_CREATED.value
        and _DUE_DIGITS_RE.match(w.retention)
        and MIN_RETENTION_MS <= int(w.retention) <= MAX_RETENTION_MS
    ):
        return "retention", _RETENTION_RULE
    if (w.member == "") != (w.due == ""):
        return "timer", "member and due are given together or not at all"
    if w.member == "":
        return None
    match = _MEMBER_RE.match(w.member)
    if (
        match is None
        or match[1] not in _TIMER_KINDS
        or match[2] != run_id
        or not CORR_RE.match(match[3])
    ):
        return "timer", "not a timer entry of this run (kind|run|corr|attempt|timeout)"
    digits, limit = (w.due[1:], MAX_DELAY_MS) if w.due.startswith("+") else (w.due, MAX_DUE_MS)
    if not _DUE_DIGITS_RE.match(digits) or int(digits) > limit:
        return "due", f"'+ms' up to {MAX_DELAY_MS} or an absolute ms time up to {MAX_DUE_MS}"
    return None


def _key_problem(w: Wire) -> str | None:
    if w.key == "":
        return None
    if len(w.key.encode("utf-8", "surrogatepass")) > MAX_KEY:  # bytes, as Lua counts
        return f"longer than {MAX_KEY} characters"
    role = KEY_ROLE.get(EventType(w.type))  # other types ignore the slot
    if role == KEY_TOKEN and not HOOK_TOKEN_RE.match(w.key):
        return f"a hook token: 1-{MAX_HOOK_TOKEN} printable ASCII characters, no spaces or '|'"
    if role == KEY_FINGERPRINT and not _FINGERPRINT_RE.match(w.key):
        return f"a step fingerprint: {FINGERPRINT_LEN} lowercase hex digits"
    return None


def lua_checks() -> str:
    """The script's first pass, rendered from the constants above.

    Expects ``run_id``, ``n``, ``W`` and ``KIND`` in scope; returns the error reply
    of the first bad argument, before the script has read or written anything.
    Defines ``based_on``: the optional entry id after the events (nil when absent).
    """
    roles = ",".join(f'["{t.value}"]="{role}"' for t, role in KEY_ROLE.items())
    kinds = ",".join(f'["{k}"]=true' for k in sorted(_TIMER_KINDS))
    return f"""
local ROLE = {{{roles}}}
local TIMER_KIND = {{{kinds}}}
local function badarg(where, field, etype, detail)
  return {{'error', 'badarg', where, field, etype, detail}}
end
local function corr_ok(s)
  return #s >= 1 and #s <= {MAX_CORR} and string.find(s, '{CORR_LUA_PATTERN}') ~= nil
end
local function digits(s, most)
  return #s >= 1 and #s <= most and string.find(s, '^%d+$') ~= nil
end
if not n or n < 1 or n ~= math.floor(n) then
  return badarg('batch', 'n', '', 'a positive integer')
end
if #ARGV ~= 2 + n * W and #ARGV ~= 3 + n * W then
  return badarg('batch', 'n', '', 'ARGV holds ' .. #ARGV .. ' values, not 2 (or 3) + n * ' .. W)
end
local based_on = ARGV[3 + n * W]
if based_on and not (#based_on <= 39 and string.find(based_on, '{ENTRY_ID_LUA_PATTERN}')
    and #string.match(based_on, '^(%d+)') <= 19 and #string.match(based_on, '(%d+)$') <= 19) then
  return badarg('batch', 'based_on', '', "{_ENTRY_ID_RULE}")
end
if #run_id < 1 or #run_id > {MAX_RUN_ID} or not string.find(run_id, '{RUN_ID_LUA_PATTERN}') then
  return badarg('batch', 'run_id', '', '{_RUN_ID_RULE}')
end
for i = 1, n do
  local b = 2 + (i - 1) * W
  local etype, corr, attempt_s = ARGV[b + 1], ARGV[b + 2], ARGV[b + 3]
  local key, member, due, ret = ARGV[b + 5], ARGV[b + 6], ARGV[b + 7], ARGV[b + 8]
  local where = 'event ' .. i
  local kind = KIND[etype]
  if not kind then return badarg(where, 'type', etype, 'unknown event type') end
  if kind == 'run' and corr ~= '' then
    return badarg(where, 'corr', etype, 'must be empty for a run event')
  end
  if kind ~= 'run' and not corr_ok(corr) then
    return badarg(where, 'corr', etype, "{_CORR_RULE}")
  end
  if attempt_s ~= '' and not (digits(attempt_s, 10) and tonumber(attempt_s) <= {MAX_ATTEMPT}) then
    return badarg(where, 'attempt', etype, 'empty or an integer from 0 to {MAX_ATTEMPT}')
  end
  if key ~= '' then
    local role = ROLE[etype]
    if #key > {MAX_KEY} then
      return badarg(where, 'key', etype, 'longer than {MAX_KEY} characters')
    end
    if role == '{KEY_TOKEN}' and (#key > {MAX_HOOK_TOKEN}
        or not string.find(key, '{HOOK_TOKEN_LUA_PATTERN}')) then
      return badarg(where, 'key', etype,
        "a hook token: 1-{MAX_HOOK_TOKEN} printable ASCII characters, no spaces or '|'")
    end
    if role == '{KEY_FINGERPRINT}' and not (#key == {FINGERPRINT_LEN}
        and string.find(key, '^[0-9a-f]+$')) then
      return badarg(where, 'key', etype,
        'a step fingerprint: {FINGERPRINT_LEN} lowercase hex digits')
    end
  end
  if ret ~= '' and not (etype == 'run_created' and digits(ret, 15)
      and tonumber(ret) >= {MIN_RETENTION_MS} and tonumber(ret) <= {MAX_RETENTION_MS}) then
    return badarg(where, 'retention', etype, '{_RETENTION_RULE}')
  end
  if (member == '') ~= (due == '') then
    return badarg(where, 'timer', etype, 'member and due are given together or not at all')
  end
  if member ~= '' then
    local tkind, trun, tcorr = string.match(member, '^(%l+)|([^|]+)|([^|]+)|%d+|%d+$')
    local parts = {{string.match(member, '|(%d+)|(%d+)$')}}
    if not tkind or not TIMER_KIND[tkind] or trun ~= run_id or not corr_ok(tcorr)
        or #parts[1] > 10 or #parts[2] > 15 then
      return badarg(where, 'timer', etype,
        'not a timer entry of this run (kind|run|corr|attempt|timeout)')
    end
    local ds, limit = due, {MAX_DUE_MS}
    if string.sub(due, 1, 1) == '+' then ds, limit = string.sub(due, 2), {MAX_DELAY_MS} end
    if not (digits(ds, 15) and tonumber(ds) <= limit) then
      return badarg(where, 'due', etype,
        "'+ms' up to {MAX_DELAY_MS} or an absolute ms time up to {MAX_DUE_MS}")
    end
  end
end
"""


def fingerprint_difference(logged: str, sent: str) -> str:
    """How a step_started's fingerprint differs from its step_created's, for the error."""
    return (
        f"its name or arguments differ (call fingerprint {sent or 'none'}, "
        f"the log's {logged or 'none'})"
    )


def token_conflict(token: str, owner: str, corr: str) -> HookTokenConflictError:
    """The error for a hook whose token another live hook (``owner``: "run|corr") holds."""
    owner_run = owner.partition("|")[0]
    return HookTokenConflictError(
        f"hook token {token!r} is already used by a live hook of run {owner_run!r}",
        token=token,
        owner_run=owner_run,
        corr=corr,
    )
