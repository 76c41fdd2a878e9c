"""The Lua scripts that move a request between states, each atomic on the Redis server.

Every state change that two processes could race on (enqueue vs. dedupe, dispatch vs. cancel,
finish vs. reclaim) is one script. Only `dllmserve.broker.scripts` calls them: it gives each one
named arguments and a typed reply.
"""

from __future__ import annotations

from dllmserve.broker.inbox_entry import IDS_FIELD, SEPARATOR

_LUA_HELPERS = """
local function is_terminal(s)
  return s == 'done' or s == 'failed' or s == 'cancelled' or s == 'expired' or s == 'dead'
end
-- One more (or one less) queued request of the request's client (the per-client cap): its
-- quota bucket, or its client when it has none.
local function count_queued(rk, delta)
  local c = redis.call('HGET', rk, 'quota') or redis.call('HGET', rk, 'client')
  if not c or c == '' then return end
  if redis.call('HINCRBY', 'dllm:queued', c, delta) <= 0 then
    redis.call('HDEL', 'dllm:queued', c)
  end
end
-- The request's own TTL (the scheduler's --result-ttl, stored at enqueue), else `default`.
local function ttl_of(rk, default)
  return tonumber(redis.call('HGET', rk, 'ttl') or '') or tonumber(default)
end
local function publish_error(rid, attempt, code, msg, now, ttl)
  local res = 'dllm:res:' .. rid
  ttl = ttl_of('dllm:req:' .. rid, ttl)
  redis.call('XADD', res, '*', 'a', attempt, 'k', 'e', 'code', code, 'msg', msg)
  redis.call('EXPIRE', res, ttl)
  redis.call('EXPIRE', 'dllm:req:' .. rid, ttl)
end
"""

# KEYS: req, pending. ARGV: request id, max_queue, max queued per client (0: no cap), owned
# ("1": another client's id is hidden), now, then the stored request's hash fields as name/value
# pairs (`scripts.StoredRequest.hash_fields`). The same id with another admission, model or
# priority is a conflict. Replies {outcome, value}: the outcomes are the names of
# `scripts.Enqueue`.
ENQUEUE = (
    _LUA_HELPERS
    + """
local rec = {}
for i = 6, #ARGV, 2 do rec[ARGV[i]] = ARGV[i + 1] end
local st = redis.call('HGET', KEYS[1], 'status')
if st then
  if ARGV[4] == '1' and redis.call('HGET', KEYS[1], 'client') ~= rec.client then
    return {'not_yours', ''}
  end
  local h = redis.call('HMGET', KEYS[1], 'admission', 'model', 'priority')
  if h[1] ~= rec.admission or h[2] ~= rec.model or h[3] ~= rec.priority then
    return {'conflict', st}
  end
  return {'duplicate', st}
end
local n = redis.call('XLEN', KEYS[2])
if n >= tonumber(ARGV[2]) then return {'queue_full', tostring(n)} end
local mine = tonumber(redis.call('HGET', 'dllm:queued', rec.quota or rec.client) or '0')
if tonumber(ARGV[3]) > 0 and mine >= tonumber(ARGV[3]) then
  return {'client_cap', tostring(mine)}
end
redis.call('HSET', KEYS[1], unpack(ARGV, 6))
redis.call('HSET', KEYS[1], 'status', 'queued', 'attempt', '1', 't_enq', ARGV[5], 'cancel', '0',
  'worker', '')
count_queued(KEYS[1], 1)
redis.call('XADD', KEYS[2], '*', 'id', ARGV[1])
return {'queued', tostring(n + 1)}
"""
)

# The inbox entry's field and separator, as `inbox_entry.InboxEntry` reads them.
_INBOX_ENTRY = f"local INBOX_IDS, INBOX_SEP = '{IDS_FIELD}', '{SEPARATOR}'\n"

# KEYS: inbox, load, pending, worker. ARGV: worker, now, isolation tag ("" for a normal
# batch), then (entry id, request id) pairs.
# Hands every still-queued request of the pairs to the worker in one inbox entry (an
# `inbox_entry.InboxEntry`); acks all.
# Returns false, touching nothing, unless the worker's heartbeat says "ready" (a worker that
# started draining, or is gone, never gets a batch it would not read) and isolation allows it:
# suspects of one tag go only to a worker holding nothing else, and while it holds them it
# gets nothing else.
ASSIGN = (
    _LUA_HELPERS
    + _INBOX_ENTRY
    + """
if redis.call('HGET', KEYS[4], 'state') ~= 'ready' then return false end
local iso = 'dllm:iso:' .. ARGV[1]
local busy = tonumber(redis.call('GET', KEYS[2]) or '0') > 0
local held = redis.call('GET', iso)
if ARGV[3] ~= '' then
  if busy and held ~= ARGV[3] then return false end
  redis.call('SET', iso, ARGV[3])
elseif held then
  if busy then return false end
  redis.call('DEL', iso)
end
local ids = {}
for i = 4, #ARGV, 2 do
  local eid, rid = ARGV[i], ARGV[i + 1]
  local rk = 'dllm:req:' .. rid
  if redis.call('HGET', rk, 'status') == 'queued' then
    redis.call('HSET', rk, 'status', 'dispatched', 'worker', ARGV[1], 't_disp', ARGV[2])
    redis.call('ZADD', 'dllm:assigned', ARGV[2], rid)
    count_queued(rk, -1)
    ids[#ids + 1] = rid
  end
  redis.call('XACK', KEYS[3], 'dispatch', eid)
  redis.call('XDEL', KEYS[3], eid)
end
if #ids > 0 then
  redis.call('XADD', KEYS[1], '*', INBOX_IDS, table.concat(ids, INBOX_SEP))
  redis.call('INCRBY', KEYS[2], #ids)
end
return ids
"""
)

# KEYS: pending. ARGV: entry id, request id, status, code, msg, now, ttl.
# Ends a queued request without running it (expired deadline, cancelled, stale entry).
DROP_QUEUED = (
    _LUA_HELPERS
    + """
local rk = 'dllm:req:' .. ARGV[2]
local h = redis.call('HMGET', rk, 'status', 'attempt')
redis.call('XACK', KEYS[1], 'dispatch', ARGV[1])
redis.call('XDEL', KEYS[1], ARGV[1])
if h[1] ~= 'queued' then return 0 end
count_queued(rk, -1)
redis.call('HSET', rk, 'status', ARGV[3], 't_done', ARGV[6])
publish_error(ARGV[2], h[2], ARGV[4], ARGV[5], ARGV[6], ARGV[7])
return 1
"""
)

# KEYS: req, load. ARGV: worker, now, ttl, request id, then the fields to read
# (`scripts.Started.FIELDS`). The worker takes a dispatched request: replies those fields'
# values in the order asked, or nil.
START = (
    _LUA_HELPERS
    + """
local h = redis.call('HMGET', KEYS[1], 'status', 'worker', 'cancel', 'attempt')
if h[1] ~= 'dispatched' or h[2] ~= ARGV[1] then return false end
if h[3] == '1' then
  redis.call('HSET', KEYS[1], 'status', 'cancelled', 't_done', ARGV[2])
  redis.call('ZREM', 'dllm:assigned', ARGV[4])
  publish_error(ARGV[4], h[4], 'CANCELLED', 'cancelled', ARGV[2], ARGV[3])
  redis.call('DECR', KEYS[2])
  return false
end
redis.call('HSET', KEYS[1], 'status', 'running', 't_start', ARGV[2])
return redis.call('HMGET', KEYS[1], unpack(ARGV, 5))
"""
)

# KEYS: req, res, load. ARGV: worker, attempt, status, now, ttl (when the request has none of
# its own), then record field/value pairs.
# Publishes the terminal record, fenced: only the worker that owns this attempt may finish it.
FINISH = (
    _LUA_HELPERS
    + """
local h = redis.call('HMGET', KEYS[1], 'worker', 'attempt', 'status')
if h[1] ~= ARGV[1] or h[2] ~= ARGV[2] or (h[3] ~= 'running' and h[3] ~= 'dispatched') then
  return 0
end
redis.call('HSET', KEYS[1], 'status', ARGV[3], 't_done', ARGV[4])
redis.call('ZREM', 'dllm:assigned', string.sub(KEYS[1], 10))  -- KEYS[1] is dllm:req:{id}
local rec = {'a', ARGV[2]}
for i = 6, #ARGV do rec[#rec + 1] = ARGV[i] end
redis.call('XADD', KEYS[2], '*', unpack(rec))
local ttl = ttl_of(KEYS[1], ARGV[5])
redis.call('EXPIRE', KEYS[2], ttl)
redis.call('EXPIRE', KEYS[1], ttl)
redis.call('DECR', KEYS[3])
return 1
"""
)

# KEYS: req. ARGV: request id, code, msg, now, ttl.
# Returns "notfound", the terminal status it already had, "cancelled" or "cancelling".
CANCEL = (
    _LUA_HELPERS
    + """
local h = redis.call('HMGET', KEYS[1], 'status', 'worker', 'attempt')
if not h[1] then return 'notfound' end
if is_terminal(h[1]) then return h[1] end
redis.call('HSET', KEYS[1], 'cancel', '1')
if h[1] == 'queued' then
  count_queued(KEYS[1], -1)
  redis.call('HSET', KEYS[1], 'status', 'cancelled', 't_done', ARGV[4])
  publish_error(ARGV[1], h[3], ARGV[2], ARGV[3], ARGV[4], ARGV[5])
  return 'cancelled'
end
redis.call('XADD', 'dllm:ctl:' .. h[2], 'MAXLEN', '~', '10000', '*', 'id', ARGV[1],
  'code', ARGV[2], 'msg', ARGV[3])
return 'cancelling'
"""
)

# KEYS: req, pending. ARGV: dead worker, max_attempts, now, ttl, request id, charge, tag.
# Takes a request back from a worker that died or stalled (or handed it back while draining).
# A request it never started is queued again as is. A running one is queued with attempt + 1
# and, unless handed back (charge "0"), marked a suspect: `iso` = tag, so it runs isolated
# (docs/service.md, "Poison isolation"). Charge "1" (it ran alone on the worker that died)
# also counts a crash against it: at max_attempts crashes it is dead-lettered instead.
RECLAIM = (
    _LUA_HELPERS
    + """
local h = redis.call('HMGET', KEYS[1], 'status', 'worker', 'attempt', 'cancel')
if h[2] ~= ARGV[1] then return 'skip' end
if h[1] ~= 'dispatched' and h[1] ~= 'running' then return 'skip' end
redis.call('ZREM', 'dllm:assigned', ARGV[5])
if h[4] == '1' then
  redis.call('HSET', KEYS[1], 'status', 'cancelled', 't_done', ARGV[3])
  publish_error(ARGV[5], h[3], 'CANCELLED', 'cancelled', ARGV[3], ARGV[4])
  return 'cancelled'
end
if h[1] == 'running' then
  local a = tonumber(h[3])
  if ARGV[6] == '1' then
    local crashes = redis.call('HINCRBY', KEYS[1], 'crashes', 1)
    if crashes >= tonumber(ARGV[2]) then
      redis.call('HSET', KEYS[1], 'status', 'dead', 't_done', ARGV[3])
      redis.call('XADD', 'dllm:dead', 'MAXLEN', '~', '100000', '*', 'id', ARGV[5],
        'attempts', h[3], 'crashes', crashes, 'worker', ARGV[1], 't', ARGV[3])
      publish_error(ARGV[5], h[3], 'ABORTED',
        'the request crashed or stalled ' .. crashes .. ' workers while running alone and '
        .. 'was moved to the dead-letter stream', ARGV[3], ARGV[4])
      return 'dead'
    end
  end
  if ARGV[6] ~= '0' and ARGV[7] then redis.call('HSET', KEYS[1], 'iso', ARGV[7]) end
  redis.call('HSET', KEYS[1], 'attempt', tostring(a + 1))
end
redis.call('HSET', KEYS[1], 'status', 'queued', 'worker', '')
count_queued(KEYS[1], 1)
redis.call('XADD', KEYS[2], '*', 'id', ARGV[5])
return 'requeued'
"""
)

# KEYS: lease. ARGV: holder, ttl_ms. Takes or renews the lease; returns 1 when held.
LEASE_ACQUIRE = """
local cur = redis.call('GET', KEYS[1])
if cur == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if not cur then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""

# KEYS: lease. ARGV: holder.
LEASE_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


# ARGV: now, ttl, then (request id, attempt, first, payload) per step record.
# All step records of one engine iteration in one call: one round trip and little packing.
# A request whose record is gone (Redis lost it) gets no record: nothing without a TTL is made.
# A stream's first record gives it the larger of `ttl` and the request's own TTL (it is still
# running); the final record sets the request's own.
PUBLISH_STEPS = (
    _LUA_HELPERS
    + """
for i = 3, #ARGV, 4 do
  local res = 'dllm:res:' .. ARGV[i]
  if redis.call('EXISTS', 'dllm:req:' .. ARGV[i]) == 1 then
    redis.call('XADD', res, '*', 'a', ARGV[i + 1], 'k', 's', 'p', ARGV[i + 3])
    if ARGV[i + 2] == '1' then
      redis.call('EXPIRE', res, math.max(tonumber(ARGV[2]), ttl_of('dllm:req:' .. ARGV[i], 0)))
      redis.call('HSETNX', 'dllm:req:' .. ARGV[i], 't_first', ARGV[1])
    end
  end
end
return 1
"""
)
