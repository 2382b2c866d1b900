"""The append script: check, XADD, update the status hash and active index atomically.

Rendered from ``transitions.RULES`` and ``integrity`` so the rules and limits are
written once. Redis runs a script as one atomic step, which is what makes
concurrent appenders (two schedulers, a redelivered worker) unable to record
anything twice. Redis does not roll a script back, so every argument is checked
(``integrity.lua_checks``) and every transition decided before the first write:
a batch is written whole or not at all.

KEYS: stream, status hash, active-index shard, timer-index shard, runs-index shard
(every run, scored by creation time), finished-index shard, expire-index shard: all
in the run's shard, so one slot (``names``).
ARGV: run_id, n, then per event: type, corr, attempt ("" for none), data, key (the
workflow name of run_created, the token of hook_created, the call fingerprint of
step_created / step_started), timer member ("" for none), timer due ("+ms" after
now, or absolute ms), retention (run_created: the run's own, in ms; "" for none);
then, optionally, based_on: an entry id the log must still hold, or the batch is
refused (code truncated: a failover lost the entries a decision was made from).
The status hash's fields are named by ``statushash`` (rendered into every script
as Lua helpers), as ``statushash.record_written`` updates them for the memory store.
Besides the stream entry, a written step_created records its entry id (x:<corr>,
so a retry can re-dispatch the step's arguments) and its call fingerprint
(f:<corr>), and a written step_started stamps the step's heartbeat (h:<corr>). A
step_started with a fingerprint must match f:<corr> when the step has one. A
hook's token is recorded in the status hash (t:<corr>) and must be unused by any
other hook of the same batch; the namespace's token registry is in other slots and
is claimed before the append and released after it (``redis_store``).
The batch that makes the run terminal stamps its finish time (``end``) and enters
it in a retention index: the expire shard at finish + its own retention (``ret``,
from run_created) if it has one, else the finished shard at its finish time.
Reply: {"ok", id-or-"", ...} or {"error", code, entity, current, event_type, detail};
code badarg: entity is "event <i>" (or "batch") and current the field.
"""

from __future__ import annotations

from . import schedules as sc
from .events import SCHEMA_VERSION, EventType
from .integrity import WIDTH, lua_checks
from .kinds import RUN_TERMINAL_STATES
from .statushash import RUN as sh_run
from .statushash import lua_helpers
from .transitions import lua_table

_FIELDS = lua_helpers()

_KINDS = ",".join(f'["{t.value}"]="{t.kind}"' for t in EventType)
_TERMINAL = ",".join(f'["{s}"]=true' for s in sorted(RUN_TERMINAL_STATES))

APPEND_SCRIPT = f"""
{_FIELDS}local W = {WIDTH}
local T = {lua_table()}
local KIND = {{{_KINDS}}}
local TERMINAL = {{{_TERMINAL}}}
local stream, status, active, timers = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local runs, finished, expire = KEYS[5], KEYS[6], KEYS[7]
local run_id, n = ARGV[1], tonumber(ARGV[2])
{lua_checks()}
local run_state = redis.call('HGET', status, F_RUN) or ''
if based_on and run_state ~= '' and #redis.call('XRANGE', stream, based_on, based_on) == 0 then
  return {{'error', 'truncated', 'run', run_state, '', based_on}}
end
local stored_wf = redis.call('HGET', status, F_WF) or ''
local entity = {{}}
local plan = {{}}
local claimed = {{}}

local function load(corr)
  local cached = entity[corr]
  if cached then return cached end
  local raw = redis.call('HMGET', status, f_entity(corr), f_attempt(corr), f_fingerprint(corr))
  local kind, state = '', ''
  if raw[1] then
    local dot = string.find(raw[1], '.', 1, true)
    kind = string.sub(raw[1], 1, dot - 1)
    state = string.sub(raw[1], dot + 1)
  end
  local e = {{kind, state, tonumber(raw[2] or '0'), raw[3] or ''}}
  entity[corr] = e
  return e
end

for i = 1, n do
  local b = 2 + (i - 1) * W
  local etype, corr, attempt_s = ARGV[b + 1], ARGV[b + 2], ARGV[b + 3]
  local wf = ARGV[b + 5]
  local kind = KIND[etype]
  if kind == 'run' then
    if etype == 'run_created' and run_state ~= '' and stored_wf ~= '' and wf ~= stored_wf then
      return {{'error', 'mismatch', 'run', stored_wf, etype, wf}}
    end
    local rule = T.run[run_state] and T.run[run_state][etype]
    if not rule then
      if run_state == '' then return {{'error', 'notfound', 'run', '', etype, ''}} end
      if TERMINAL[run_state] then return {{'error', 'closed', 'run', run_state, etype, ''}} end
      return {{'error', 'illegal', 'run', run_state, etype, ''}}
    end
    if rule[1] == 'w' then
      run_state = rule[2]
      plan[i] = {{true, 'run', rule[2], 0}}
    else
      plan[i] = {{false}}
    end
  else
    if run_state == '' then return {{'error', 'notfound', 'run', '', etype, ''}} end
    if TERMINAL[run_state] then return {{'error', 'closed', 'run', run_state, etype, ''}} end
    if run_state ~= 'started' then return {{'error', 'illegal', 'run', run_state, etype, ''}} end
    local e = load(corr)
    local label = kind .. ' ' .. corr
    if e[2] ~= '' and e[1] ~= kind then
      return {{'error', 'illegal', label, e[1] .. ' ' .. e[2], etype, ''}}
    end
    local rule = T[kind][e[2]] and T[kind][e[2]][etype]
    if (not rule) or rule[1] == 'i' then
      local cur = e[2]
      if cur == '' then cur = 'absent' end
      return {{'error', 'illegal', label, cur, etype, ''}}
    end
    if etype == 'step_started' and wf ~= '' and e[4] ~= '' and wf ~= e[4] then
      return {{'error', 'forged', label, e[4], etype, wf}}
    end
    local write = rule[1] == 'w'
    if write and etype == 'hook_created' and wf ~= '' then
      local mine = run_id .. '|' .. corr
      local owner = claimed[wf]
      if owner and owner ~= mine then
        return {{'error', 'tokenclash', label, owner, etype, wf}}
      end
      claimed[wf] = mine
    end
    local attempt = tonumber(attempt_s) or 0
    if write and rule[3] == 'ge' and attempt < e[3] then write = false end
    if write and rule[3] == 'gt' and attempt <= e[3] then write = false end
    if write then
      local a = math.max(e[3], attempt)
      local fp = e[4]
      if etype == 'step_created' then fp = wf end
      entity[corr] = {{kind, rule[2], a, fp}}
      plan[i] = {{true, kind, rule[2], a, corr, attempt_s ~= ''}}
    else
      plan[i] = {{false}}
    end
  end
end

local t = redis.call('TIME')
local now = tostring(tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
local reply = {{'ok'}}
local written = 0
for i = 1, n do
  local p = plan[i]
  if p[1] then
    local b = 2 + (i - 1) * W
    local id = redis.call('XADD', stream, '*', 'type', ARGV[b + 1], 'corr', ARGV[b + 2],
      'data', ARGV[b + 4], 'ts', now, 'v', '{SCHEMA_VERSION}')
    reply[#reply + 1] = id
    written = written + 1
    if p[2] == 'run' then
      redis.call('HSET', status, F_RUN, p[3], F_LAST, id)
      if ARGV[b + 1] == 'run_created' then
        redis.call('HSET', status, F_WF, ARGV[b + 5], F_CREATED, now)
        if ARGV[b + 8] ~= '' then redis.call('HSET', status, F_RET, ARGV[b + 8]) end
        redis.call('ZADD', runs, now, run_id)
      end
    else
      redis.call('HSET', status, f_entity(p[5]), p[2] .. '.' .. p[3], F_LAST, id)
      if p[6] then redis.call('HSET', status, f_attempt(p[5]), p[4]) end
      if ARGV[b + 1] == 'step_created' then
        redis.call('HSET', status, f_created_id(p[5]), id)
        if ARGV[b + 5] ~= '' then redis.call('HSET', status, f_fingerprint(p[5]), ARGV[b + 5]) end
      end
      if ARGV[b + 1] == 'step_started' then redis.call('HSET', status, f_heartbeat(p[5]), now) end
      if ARGV[b + 1] == 'hook_created' and ARGV[b + 5] ~= '' then
        redis.call('HSET', status, f_token(p[5]), ARGV[b + 5])
      end
    end
    local member, due = ARGV[b + 6], ARGV[b + 7]
    if member ~= '' then
      local at
      if string.sub(due, 1, 1) == '+' then
        at = tonumber(now) + tonumber(string.sub(due, 2))
      else
        at = tonumber(due)
      end
      redis.call('ZADD', timers, at, member)
    end
  else
    reply[#reply + 1] = ''
  end
end
if written > 0 then
  redis.call('HINCRBY', status, F_N, written)
  if TERMINAL[run_state] then
    redis.call('ZREM', active, run_id)
    redis.call('HSET', status, F_END, now)
    local ret = redis.call('HGET', status, F_RET)
    if ret then
      redis.call('ZADD', expire, tonumber(now) + tonumber(ret), run_id)
    else
      redis.call('ZADD', finished, now, run_id)
    end
  else
    redis.call('ZADD', active, now, run_id)
  end
end
return reply
"""

# Claim due timer entries of one shard under a lease: re-scored to now + lease so
# no other claimer sees them, and due again by themselves if the claimer dies.
# KEYS: timer shard. ARGV: limit, lease ms. Reply: {now, member, due, member, due, ...}
CLAIM_TIMERS_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'WITHSCORES', 'LIMIT', 0,
  tonumber(ARGV[1]))
local reply = {tostring(now)}
for i = 1, #due, 2 do
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), due[i])
  reply[#reply + 1] = due[i]
  reply[#reply + 1] = due[i + 1]
end
return reply
"""

# Remove a claimed timer only if it still carries our lease (not re-armed meanwhile).
# KEYS: timer shard. ARGV: member, lease score.
RELEASE_TIMER_SCRIPT = """
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if score and tonumber(score) == tonumber(ARGV[2]) then
  return redis.call('ZREM', KEYS[1], ARGV[1])
end
return 0
"""

# Add a timer due `+ms` from now (Redis clock) or at absolute ms. KEYS: shard. ARGV: member, due.
ADD_TIMER_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local at
if string.sub(ARGV[2], 1, 1) == '+' then at = now + tonumber(string.sub(ARGV[2], 2))
else at = tonumber(ARGV[2]) end
redis.call('ZADD', KEYS[1], at, ARGV[1])
return tostring(at)
"""

# Stamp a step's heartbeat with the Redis clock, only while that attempt is running.
# KEYS: status hash. ARGV: corr, attempt. Reply: 1 if stamped.
HEARTBEAT_SCRIPT = f"""
{_FIELDS}local state = redis.call('HGET', KEYS[1], f_entity(ARGV[1]))
local attempt = tonumber(redis.call('HGET', KEYS[1], f_attempt(ARGV[1])) or '0')
if state ~= 'step.started' or attempt ~= tonumber(ARGV[2]) then return 0 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[1], f_heartbeat(ARGV[1]), now)
return 1
"""

# An entity's status plus the Redis clock. KEYS: status hash. ARGV: corr.
ENTITY_SCRIPT = f"""
{_FIELDS}local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local v = redis.call('HMGET', KEYS[1], F_RUN, f_entity(ARGV[1]), f_attempt(ARGV[1]),
  f_created_id(ARGV[1]), f_heartbeat(ARGV[1]), F_WF)
return {{v[1] or '', v[2] or '', v[3] or '0', v[4] or '', v[5] or '', tostring(now), v[6] or ''}}
"""

# Push an unfinished run's active-index score to ARGV[3], only if it is still ARGV[2]:
# an append since the reconciler read it (progress) set it to now, and that wins.
# KEYS: active shard. ARGV: run_id, seen score, new score. Reply: 1 if moved.
DEFER_CHECK_SCRIPT = """
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if score and tonumber(score) == tonumber(ARGV[2]) then
  redis.call('ZADD', KEYS[1], 'XX', ARGV[3], ARGV[1])
  return 1
end
return 0
"""

# Take a hook token in the registry (token -> "run|corr") if it is free (ARGV[3] "") or
# still held by ARGV[3] (a holder the caller found no longer live): compare-and-set.
# KEYS: the token's registry shard. ARGV: token, owner, expected holder.
# Reply: {"mine"} (already ours), {"taken"}, or {"held", holder}.
CLAIM_HOOK_SCRIPT = """
local cur = redis.call('HGET', KEYS[1], ARGV[1]) or ''
if cur == ARGV[2] then return {'mine'} end
if cur == ARGV[3] then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
  return {'taken'}
end
return {'held', cur}
"""

# Drop a hook token only if it still maps to the given owner. KEYS: token index. ARGV: token, owner.
FORGET_HOOK_SCRIPT = """
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  return redis.call('HDEL', KEYS[1], ARGV[1])
end
return 0
"""

# Rewrite a run's derived state from its stream, but only if the stream has not moved
# since the caller read it (so a concurrent append is never overwritten).
# KEYS: stream, status, active shard, timer shard, runs-index shard, finished shard,
#       expire shard (one slot; the caller then registers the live hooks' tokens).
# ARGV: run_id, expected last id, active ("1"/"0"), nfields, field, value, ...,
#       ntimers, member, due, ...,
#       retention index ("finished", "expire" or "" while live), its score.
REWRITE_DERIVED_SCRIPT = f"""
{_FIELDS}local newest = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
local newest_id = ''
if newest[1] then newest_id = newest[1][1] end
if newest_id ~= ARGV[2] then return 0 end
local old = redis.call('HGETALL', KEYS[2])
local keep = {{}}
for i = 1, #old, 2 do
  if string.sub(old[i], 1, #VOLATILE) == VOLATILE then
    keep[#keep + 1] = old[i]
    keep[#keep + 1] = old[i + 1]
  end
end
redis.call('DEL', KEYS[2])
local i = 4
local nfields = tonumber(ARGV[i])
for j = 1, nfields do
  redis.call('HSET', KEYS[2], ARGV[i + 2 * j - 1], ARGV[i + 2 * j])
end
i = i + 2 * nfields + 1
for j = 1, #keep, 2 do redis.call('HSET', KEYS[2], keep[j], keep[j + 1]) end
local created = redis.call('HGET', KEYS[2], F_CREATED)
if created then redis.call('ZADD', KEYS[5], 'NX', created, ARGV[1]) end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if ARGV[3] == '1' then
  redis.call('ZADD', KEYS[3], 'NX', now, ARGV[1])
else
  redis.call('ZREM', KEYS[3], ARGV[1])
end
local ntimers = tonumber(ARGV[i])
for j = 1, ntimers do
  redis.call('ZADD', KEYS[4], 'NX', ARGV[i + 2 * j], ARGV[i + 2 * j - 1])
end
i = i + 2 * ntimers + 1
redis.call('ZREM', KEYS[6], ARGV[1])
redis.call('ZREM', KEYS[7], ARGV[1])
if ARGV[i] == 'finished' then redis.call('ZADD', KEYS[6], ARGV[i + 1], ARGV[1]) end
if ARGV[i] == 'expire' then redis.call('ZADD', KEYS[7], ARGV[i + 1], ARGV[1]) end
return 1
"""

# Offloaded values of one run (eventlog.blobs), written before the entry that references
# them. KEYS: status hash, blob set, then one blob key per digest. ARGV: "1" if the batch
# creates the run, the digests, then the blobs' bytes in the same order. Only a run that
# exists (or is being created) and has not ended gets keys: a removed run stays removed.
PUT_BLOBS_SCRIPT = f"""
local terminal = {{{_TERMINAL}}}
local run = redis.call('HGET', KEYS[1], '{sh_run}')
if not run then
  if ARGV[1] ~= '1' then return 'notfound' end
elseif terminal[run] then
  return 'closed'
end
local n = #KEYS - 2
for i = 1, n do
  redis.call('SET', KEYS[i + 2], ARGV[1 + n + i], 'NX')
  redis.call('SADD', KEYS[2], ARGV[1 + i])
end
return 'ok'
"""

# Remove everything of one finished run, atomically (see ``Maintenance.remove_run``).
# KEYS: stream, status, runs shard, active shard, finished shard, expire shard, timer shard,
#       blob set, output set, then every blob key the blob set names, then every output
#       stream the output set names (all in the run's slot).
# ARGV: run_id, expected last id ("" for any), the newest id the caller read (its timer
#       members are computed from the log up to there), nblobs, ntimers, member, ...
# Reply: {removed, token, owner, token, owner...} (the hook tokens the run recorded: the
#        caller releases them in the registry, which is in other slots) | {notfound} |
#        {live} | {moved} | {stale} (the caller's reading is out of date: the log, the
#        blob set or the output set changed since; it reads again and retries).
REMOVE_RUN_SCRIPT = f"""
{_FIELDS}local TERMINAL = {{{_TERMINAL}}}
local stream, status, blobs, outs = KEYS[1], KEYS[2], KEYS[8], KEYS[9]
local run_id, expected, seen = ARGV[1], ARGV[2], ARGV[3]
local nblobs, ntimers = tonumber(ARGV[4]), tonumber(ARGV[5])
local state = redis.call('HGET', status, F_RUN)
if (not state) or state == '' then
  -- No run: a leftover retention entry (keys deleted by hand) would be due forever.
  redis.call('ZREM', KEYS[5], run_id)
  redis.call('ZREM', KEYS[6], run_id)
  return {{'notfound'}}
end
if not TERMINAL[state] then return {{'live'}} end
local newest = redis.call('XREVRANGE', stream, '+', '-', 'COUNT', 1)
local newest_id = ''
if newest[1] then newest_id = newest[1][1] end
if expected ~= '' and expected ~= newest_id then return {{'moved'}} end
if seen ~= newest_id or redis.call('SCARD', blobs) ~= nblobs
  or redis.call('HLEN', outs) ~= #KEYS - 9 - nblobs then
  return {{'stale'}}
end
local reply = {{'removed'}}
local fields = redis.call('HGETALL', status)
for i = 1, #fields, 2 do
  local f = fields[i]
  if string.sub(f, 1, #P_TOKEN) == P_TOKEN then
    reply[#reply + 1] = fields[i + 1]
    reply[#reply + 1] = run_id .. '|' .. string.sub(f, #P_TOKEN + 1)
  end
end
for i = 1, ntimers do redis.call('ZREM', KEYS[7], ARGV[5 + i]) end
for i = 3, 6 do redis.call('ZREM', KEYS[i], run_id) end
for i = 10, #KEYS do redis.call('DEL', KEYS[i]) end
redis.call('DEL', stream, status, blobs, outs)
return reply
"""

# Append one entry to an output stream of a live run (``eventlog/outputs.py``).
# KEYS: status hash, output set (name -> bytes used), the output stream (one slot).
# ARGV: name, step, attempt, restarted ("1"/"0"), kind ("c" chunk / "e" end mark), data,
#       the writer's sequence number (its n-th write), max streams, max bytes, max entries.
# Entry ids are positions: 0-1, 0-2, ... A write whose writer (step, attempt) and sequence
# number are already the newest entry's is a repeat (a retried call whose reply was lost):
# its index is returned and nothing is written. Reply: {"ok", index} | {"refused", why}.
WRITE_OUTPUT_SCRIPT = f"""
{_FIELDS}local TERMINAL = {{{_TERMINAL}}}
local status, outs, stream = KEYS[1], KEYS[2], KEYS[3]
local name, step, attempt, seq = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[7])
local run = redis.call('HGET', status, F_RUN)
if (not run) or run == '' then return {{'refused', 'notfound'}} end
if TERMINAL[run] then return {{'refused', 'closed'}} end
local used = redis.call('HGET', outs, name)
local position = 1
if used then
  used = tonumber(used)
  local last = redis.call('XREVRANGE', stream, '+', '-', 'COUNT', 1)[1]
  if last then
    local id = last[1]
    position = tonumber(string.sub(id, string.find(id, '-', 1, true) + 1)) + 1
    local f = {{}}
    for i = 1, #last[2], 2 do f[last[2][i]] = last[2][i + 1] end
    if f['s'] == step and tonumber(f['a']) == attempt and tonumber(f['n'] or '0') >= seq then
      return {{'ok', position - 2}}
    end
    if f['k'] == 'e' and (f['s'] ~= step or tonumber(f['a']) >= attempt) then
      return {{'refused', 'ended'}}
    end
  end
else
  if redis.call('HLEN', outs) >= tonumber(ARGV[8]) then return {{'refused', 'toomany'}} end
  used = 0
end
local size = #ARGV[6] + #step + 24
if ARGV[5] == 'c' and (used + size > tonumber(ARGV[9]) or position > tonumber(ARGV[10])) then
  return {{'refused', 'full'}}
end
redis.call('XADD', stream, '0-' .. position, 'k', ARGV[5], 's', step, 'a', ARGV[3],
  'r', ARGV[4], 'n', ARGV[7], 'v', ARGV[6])
redis.call('HSET', outs, name, used + size)
return {{'ok', position - 1}}
"""

# Concurrency slots (eventlog/slots.py). KEYS: holders (ZSET member -> lease expiry ms),
# waiting (ZSET member -> arrival number), messages (HASH member -> parked message),
# info (HASH: limit, key, seq). Expired holders are dropped first; then the oldest waiters
# are promoted into free slots (at most ARGV max_promote), their messages returned.
_SLOT_HELPERS = """
local holders, waiting, messages, info = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', holders, '-inf', now)
local function promote(capacity, lease, most, skip)
  local out = {}
  while most > 0 and redis.call('ZCARD', holders) < capacity do
    local head = redis.call('ZPOPMIN', waiting)
    if not head[1] then break end
    local m = head[1]
    redis.call('ZADD', holders, now + lease, m)
    local msg = redis.call('HGET', messages, m)
    redis.call('HDEL', messages, m)
    if msg and m ~= skip then out[#out + 1] = msg end
    most = most - 1
  end
  return out
end
"""

# ARGV: member, capacity, lease ms, message, limit, key, max waiting, max promote, kind.
# Reply: {1 | 0 | -1 (line full), promoted message, ...}.
ACQUIRE_SLOT_SCRIPT = (
    _SLOT_HELPERS
    + """
local member, capacity, lease = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
redis.call('HSET', info, 'limit', ARGV[5], 'key', ARGV[6], 'capacity', ARGV[2], 'kind', ARGV[9])
local promoted = promote(capacity, lease, tonumber(ARGV[8]), member)
if redis.call('ZSCORE', holders, member) then
  redis.call('ZADD', holders, now + lease, member)
  return {1, unpack(promoted)}
end
if redis.call('ZCARD', waiting) == 0 and redis.call('ZCARD', holders) < capacity then
  redis.call('ZADD', holders, now + lease, member)
  return {1, unpack(promoted)}
end
if not redis.call('ZSCORE', waiting, member) then
  if redis.call('ZCARD', waiting) >= tonumber(ARGV[7]) then return {-1, unpack(promoted)} end
  redis.call('ZADD', waiting, redis.call('HINCRBY', info, 'seq', 1), member)
end
redis.call('HSET', messages, member, ARGV[4])
return {0, unpack(promoted)}
"""
)

# ARGV: member ("" for none: the sweep's promotion only), capacity, lease ms, max promote.
# Reply: {1 if nothing holds or waits any more else 0, promoted message, ...}.
RELEASE_SLOT_SCRIPT = (
    _SLOT_HELPERS
    + """
local member = ARGV[1]
if member ~= '' then
  redis.call('ZREM', holders, member)
  redis.call('ZREM', waiting, member)
  redis.call('HDEL', messages, member)
end
local promoted = promote(tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), '')
local empty = 0
if redis.call('ZCARD', holders) == 0 and redis.call('ZCARD', waiting) == 0 then empty = 1 end
return {empty, unpack(promoted)}
"""
)

# Rate limits (eventlog/rates.py): GCRA on actual starts, with reservations for order.
# KEYS: the bucket (HASH: tat, the next turn to give out; go, the conforming time of actual
# starts; r:<member> -> the time reserved for a member that waits). ARGV: member, interval
# ms (may be fractional), burst, idle ttl ms. Reply: 0 (start now) or the ms to wait.
RATE_TAKE_SCRIPT = """
local bucket = KEYS[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local interval, burst = tonumber(ARGV[2]), tonumber(ARGV[3])
local tau = (burst - 1) * interval
-- Starts may come up to half an interval early against the last one, so turns woken
-- late (the timer loop, RabbitMQ and a worker lie between) catch up on the schedule.
local slack = math.max(tau, interval / 2)
local field = 'r:' .. ARGV[1]
local go = tonumber(redis.call('HGET', bucket, 'go') or '0')
local at
local reserved = redis.call('HGET', bucket, field)
if reserved then
  at = tonumber(reserved)
else
  local tat = tonumber(redis.call('HGET', bucket, 'tat') or '0')
  if tat < now then tat = now end
  redis.call('HSET', bucket, 'tat', string.format('%.3f', tat + interval))
  at = tat - tau
end
if at <= now and now >= go - slack then
  if go < now then go = now end
  redis.call('HSET', bucket, 'go', string.format('%.3f', go + interval))
  redis.call('HDEL', bucket, field)
  redis.call('PEXPIRE', bucket, math.ceil(go + interval - now) + tonumber(ARGV[4]))
  return 0
end
if at < go - slack then at = go - slack end
at = math.ceil(at)
if at <= now then at = now + 1 end
redis.call('HSET', bucket, field, at)
local tat = tonumber(redis.call('HGET', bucket, 'tat') or '0')
redis.call('PEXPIRE', bucket, math.ceil(math.max(tat, at) - now) + tonumber(ARGV[4]))
return at - now
"""

# --- schedules (eventlog/schedules.py): every key carries the schedules tag, one slot ----

_NOW = """local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# Create a schedule, or (replace "1") overwrite its definition. Fields that change the
# recurrence move its next tick to ARGV[4]; anything else keeps where it stands (paused,
# next tick, counters). A new schedule is refused once the namespace holds ARGV[3].
# KEYS: schedule hash, due index, name set. ARGV: name, replace, max schedules, next ms,
# n, then n (field, value) pairs of the definition.
# Reply: {created | updated | unchanged | exists | full, the previous source or ""}.
PUT_SCHEDULE_SCRIPT = f"""
local hash, due, all, name = KEYS[1], KEYS[2], KEYS[3], ARGV[1]
local exists = redis.call('EXISTS', hash) == 1
local before = ''
if exists then
  before = redis.call('HGET', hash, '{sc.SOURCE}') or ''
  if ARGV[2] ~= '1' then return {{'exists', before}} end
elseif redis.call('SCARD', all) >= tonumber(ARGV[3]) then
  return {{'full', ''}}
end
local RECURRENCE = {{{", ".join(f"['{f}']=true" for f in sc.RECURRENCE_FIELDS)}}}
local changed, moved = not exists, not exists
for i = 6, 5 + 2 * tonumber(ARGV[5]), 2 do
  if redis.call('HGET', hash, ARGV[i]) ~= ARGV[i + 1] then
    changed = true
    if RECURRENCE[ARGV[i]] then moved = true end
    redis.call('HSET', hash, ARGV[i], ARGV[i + 1])
  end
end
if not redis.call('HGET', hash, '{sc.NEXT}') then moved = true end
if not changed and not moved then return {{'unchanged', before}} end
{_NOW}redis.call('HSET', hash, '{sc.UPDATED}', now)
if not exists then
  redis.call('HSET', hash, '{sc.CREATED}', now, '{sc.PAUSED}', '0', '{sc.RUNS}', '0',
    '{sc.MISSED_COUNT}', '0', '{sc.OVERLAP_COUNT}', '0')
  redis.call('SADD', all, name)
end
if moved then redis.call('HSET', hash, '{sc.NEXT}', ARGV[4], '{sc.PLAN}', '0') end
if redis.call('HGET', hash, '{sc.PAUSED}') ~= '1' then
  if moved then
    redis.call('ZADD', due, ARGV[4], name)
  else
    redis.call('ZADD', due, 'NX', redis.call('HGET', hash, '{sc.NEXT}'), name)
  end
end
if exists then return {{'updated', before}} end
return {{'created', before}}
"""

# Delete a schedule. KEYS: schedule hash, due index, name set. ARGV: name. Reply: 1 if it was.
DELETE_SCHEDULE_SCRIPT = """
local n = redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('SREM', KEYS[3], ARGV[1])
return n
"""

# Pause (ARGV[2] "1": out of the due index) or resume (due at ARGV[3]; what passed while
# paused is not caught up). KEYS: schedule hash, due index. ARGV: name, paused, next ms.
# Reply: notfound | unchanged | changed.
PAUSE_SCHEDULE_SCRIPT = f"""
local hash, due, name = KEYS[1], KEYS[2], ARGV[1]
if redis.call('EXISTS', hash) == 0 then return 'notfound' end
local was = redis.call('HGET', hash, '{sc.PAUSED}') == '1'
if ARGV[2] == '1' then
  redis.call('ZREM', due, name)
  if was then return 'unchanged' end
  redis.call('HSET', hash, '{sc.PAUSED}', '1')
  return 'changed'
end
if not was then return 'unchanged' end
redis.call('HSET', hash, '{sc.PAUSED}', '0', '{sc.NEXT}', ARGV[3], '{sc.PLAN}', '0')
redis.call('ZADD', due, ARGV[3], name)
return 'changed'
"""

# Claim due schedules under a lease: re-scored to now + lease, so no other claimer sees
# them, and due again by themselves if the claimer dies (as timers are claimed).
# KEYS: due index. ARGV: limit, lease ms. Reply: {now, earliest score left or "", name...}.
CLAIM_SCHEDULES_SCRIPT = f"""
{_NOW}local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
for i = 1, #due do
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), due[i])
end
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local reply = {{tostring(now), first[2] or ''}}
for i = 1, #due do reply[#reply + 1] = due[i] end
return reply
"""

# Record what a claimer did, if the schedule's next tick is still the one it claimed
# (compare-and-set): the next tick, a committed catch-up (plan), the tick acted on and
# its outcome, counters. KEYS: schedule hash, due index. ARGV: name, expected next,
# then ``schedules.Advance.args()``: next, plan, tick, outcome, run, runs +, missed +,
# overlapped +, newest missed tick. Reply: ok | moved | gone.
ADVANCE_SCHEDULE_SCRIPT = f"""
local hash, due, name = KEYS[1], KEYS[2], ARGV[1]
if redis.call('EXISTS', hash) == 0 then
  redis.call('ZREM', due, name)
  return 'gone'
end
if redis.call('HGET', hash, '{sc.NEXT}') ~= ARGV[2] then return 'moved' end
{_NOW}redis.call('HSET', hash, '{sc.NEXT}', ARGV[3], '{sc.PLAN}', ARGV[4])
if ARGV[5] ~= '' then
  redis.call('HSET', hash, '{sc.TICK}', ARGV[5], '{sc.OUTCOME}', ARGV[6], '{sc.ACTED}', now)
  if ARGV[7] ~= '' then redis.call('HSET', hash, '{sc.RUN}', ARGV[7]) end
end
redis.call('HINCRBY', hash, '{sc.RUNS}', ARGV[8])
redis.call('HINCRBY', hash, '{sc.MISSED_COUNT}', ARGV[9])
redis.call('HINCRBY', hash, '{sc.OVERLAP_COUNT}', ARGV[10])
if ARGV[11] ~= '' then redis.call('HSET', hash, '{sc.MISSED_TICK}', ARGV[11]) end
if redis.call('HGET', hash, '{sc.PAUSED}') == '1' then
  redis.call('ZREM', due, name)
else
  redis.call('ZADD', due, ARGV[3], name)
end
return 'ok'
"""

# How long (ms) the most overdue schedule of the due index has been due (0: none is).
# KEYS: due index.
SCHEDULE_LAG_SCRIPT = f"""
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if not first[2] then return 0 end
{_NOW}local late = now - tonumber(first[2])
if late < 0 then return 0 end
return late
"""
