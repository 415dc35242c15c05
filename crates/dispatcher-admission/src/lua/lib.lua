-- Shared part of the admission function library. redis_store.rs builds one Redis Functions library from this
-- file and the operation files (configure.lua, join.lua, ...), each of which becomes one registered function
-- whose body runs after bind(). Functions are loaded once, so helpers are not re-created on every call.
-- Every function touches only the keys of ONE shard (one hash tag), passed in this order:
--   KEYS[1] cfg (hash)      KEYS[2] waiting (zset seq->ticket)   KEYS[3] admitted (zset expires_ms->ticket)
--   KEYS[4] presence (zset last_seen_ms->ticket, waiting only)   KEYS[5] tickets (hash ticket->record)
--   KEYS[6] users (hash user->ticket)   KEYS[7] final (zset ended_ms->ticket)
--   KEYS[8] shard active registry (set)  KEYS[9] shard due index (zset event->ms)
--   KEYS[10] shard entry stream          KEYS[11] shard event catalogue (set)
--   KEYS[12] revoked (zset token expiry ms->ticket: tickets revoked while admitted, until their token expires)
--   KEYS[13] pre-queue (zset lottery number->ticket: joined before the start of a prequeue event)
-- ARGV[1] now in ms ("" = use the server clock), ARGV[2] event id, ARGV[3] entry stream MAXLEN (~, 0 = none),
-- ARGV[4..] operation arguments.
-- A ticket record is "S|seq|joined|admitted|expires|ended|user" with S one of
--   Q pre-queued, W waiting, A admitted, C completed, E expired, B abandoned, L left, R revoked.
-- Every function returns a table whose first element is "OK" or an error code ("UNKNOWN_EVENT", ...).

local KEYS, ARGV
local K_CFG, K_W, K_A, K_P, K_T, K_U, K_F, K_ACTIVE, K_DUE, K_ENTRY, K_EVENTS, K_RV, K_Q
local EVENT, MAXLEN, NOW, NOW_S
-- Set by promote(): the admitted count after the step, and whether the per-call limit was reached.
local P_ADMITTED, P_LIMITED = 0, false
-- Set by promote(): waiting tickets dropped in this call for want of a readable record (orphans).
local P_ORPHANED = 0

-- Binds one call's keys and arguments; every registered function starts with it.
local function bind(keys, args)
  KEYS, ARGV = keys, args
  K_CFG, K_W, K_A, K_P, K_T, K_U, K_F, K_ACTIVE, K_DUE, K_ENTRY, K_EVENTS, K_RV, K_Q =
    keys[1], keys[2], keys[3], keys[4], keys[5], keys[6], keys[7], keys[8], keys[9], keys[10], keys[11], keys[12],
    keys[13]
  EVENT = args[2]
  MAXLEN = tonumber(args[3]) or 0
  local n = tonumber(args[1])
  if n == nil or n < 0 then
    local t = redis.call('TIME')
    n = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  end
  NOW = n
  NOW_S = string.format('%.0f', NOW)
  P_ADMITTED, P_LIMITED, P_ORPHANED = 0, false, 0
end

-- Record fields stay strings (number <-> string conversions are a large part of a script's cost).
local function parse(rec)
  local s, seq, j, a, e, d, u = string.match(rec, '^(%a)|(%d+)|(%d*)|(%d*)|(%d*)|(%d*)|(.*)$')
  return { s = s, seq = seq, joined = j, admitted = a, expires = e, ended = d, user = u }
end

-- A record read from the tickets hash, or nil when there is none (HMGET's false) or it is malformed. The
-- lines (waiting, admitted, presence, pre-queue) must never parse a missing record: the error would end the
-- function after writes Redis does not roll back (a ZPOPMIN would lose every waiter it popped).
local function parse_opt(rec)
  if not rec then return nil end
  local r = parse(rec)
  if r.s == nil then return nil end
  return r
end

-- Counts `n` tickets dropped from a line for want of a readable record: `o_new` until a tick reports them
-- (then they move to the total, `n_O`).
local function count_orphans(n)
  if n > 0 then redis.call('HINCRBY', K_CFG, 'o_new', n) end
end

local function pack(r)
  return r.s .. '|' .. r.seq .. '|' .. r.joined .. '|' .. r.admitted .. '|' .. r.expires .. '|' .. r.ended .. '|' .. r.user
end

local function load_cfg()
  local v = redis.call('HMGET', K_CFG, 'cap', 'rate', 'ttl', 'abandon', 'state', 'retention', 'tok', 'tts', 'mode',
    'start')
  if not v[1] then return nil end
  local mode = v[9] or 'fifo'
  -- Passthrough admits while under capacity without the admission rate.
  local rate = tonumber(v[2]) or 0
  if mode == 'passthrough' then rate = 0 end
  return { cap = tonumber(v[1]), rate = rate, ttl = tonumber(v[3]), abandon = tonumber(v[4]),
           state = v[5], retention = tonumber(v[6]), tok = tonumber(v[7]) or 0, tts = tonumber(v[8]) or NOW,
           mode = mode, start = tonumber(v[10]) or 0 }
end

-- Token bucket for the optional admission rate (tickets per minute): refills continuously, holds at most
-- one second's worth (at least one token).
local function bucket_size(cfg) return math.max(1, cfg.rate / 60) end
local function refill(cfg)
  if cfg.rate <= 0 then return end
  local elapsed = NOW - cfg.tts
  if elapsed > 0 then
    cfg.tok = math.min(bucket_size(cfg), cfg.tok + elapsed * cfg.rate / 60000)
    cfg.tts = NOW
  end
end

-- Admit up to `limit` waiting tickets in sequence order, within capacity and rate; the step's admissions
-- are recorded as ONE entry on the shard's entry stream. Returns the number admitted, and leaves the admitted
-- count after the step in P_ADMITTED and whether the per-call limit was reached in P_LIMITED.
local function promote(cfg, limit)
  P_LIMITED = false
  local card = redis.call('ZCARD', K_A)
  P_ADMITTED = card
  if cfg.state == 'paused' then return 0 end
  local free = cfg.cap - card
  if free <= 0 then return 0 end
  local n = math.min(free, limit)
  if cfg.rate > 0 then
    refill(cfg)
    n = math.min(n, math.floor(cfg.tok + 1e-9))
  end
  if n <= 0 then return 0 end
  -- Pop the head of the line; a ticket without a readable record (an orphan) is dropped, counted and
  -- replaced by the next waiter, so one orphan neither fails the step nor costs anyone their place. At
  -- most `limit` orphans per call (then the step ends as if limited: the next pass comes at once).
  local ids, recs, orphans = {}, {}, {}
  local want = n
  while want > 0 do
    local popped = redis.call('ZPOPMIN', K_W, want)
    if #popped == 0 then break end
    local got = {}
    for i = 1, #popped / 2 do got[i] = popped[2 * i - 1] end
    local raw = redis.call('HMGET', K_T, unpack(got))
    for i = 1, #got do
      local r = parse_opt(raw[i])
      if r then
        ids[#ids + 1] = got[i]; recs[#recs + 1] = r
      else
        orphans[#orphans + 1] = got[i]
      end
    end
    want = n - #ids
    if #orphans >= limit then break end
  end
  if #orphans > 0 then
    redis.call('ZREM', K_P, unpack(orphans))
    count_orphans(#orphans)
    P_ORPHANED = #orphans
  end
  local count = #ids
  if count == 0 then
    P_LIMITED = #orphans >= limit
    return 0
  end
  local exp_s = string.format('%.0f', NOW + cfg.ttl)
  local maxlen_s = string.format('%.0f', MAXLEN)
  local hset, zadd, lines = {}, {}, {}
  for i = 1, count do
    local id = ids[i]
    local r = recs[i]
    r.s = 'A'; r.admitted = NOW_S; r.expires = exp_s
    hset[#hset + 1] = id; hset[#hset + 1] = pack(r)
    zadd[#zadd + 1] = exp_s; zadd[#zadd + 1] = id
    lines[#lines + 1] = id .. ' ' .. r.seq .. ' ' .. r.user
  end
  -- One entry for the whole step (entry.rs documents the layout): one admission keeps its own fields,
  -- several travel as lines of `ticket seq user`.
  local entry
  if count == 1 then
    entry = { 'e', EVENT, 't', ids[1], 'u', recs[1].user, 's', recs[1].seq, 'at', NOW_S, 'exp', exp_s }
  else
    entry = { 'e', EVENT, 'at', NOW_S, 'exp', exp_s, 'n', count, 'a', table.concat(lines, '\n') }
  end
  if MAXLEN > 0 then
    redis.call('XADD', K_ENTRY, 'MAXLEN', '~', maxlen_s, '*', unpack(entry))
  else
    redis.call('XADD', K_ENTRY, '*', unpack(entry))
  end
  redis.call('HSET', K_T, unpack(hset))
  redis.call('ZADD', K_A, unpack(zadd))
  redis.call('ZREM', K_P, unpack(ids))
  redis.call('HINCRBY', K_CFG, 'n_A', count)
  if cfg.rate > 0 then cfg.tok = cfg.tok - count end
  P_ADMITTED = card + count
  P_LIMITED = (count == limit) or #orphans >= limit
  return count
end

-- Move a ticket to a final state and index it for purging after the retention window. Counts the state in
-- the event's totals; a ticket revoked while admitted is listed until its token expires.
local function finish(id, r, state)
  if state == 'R' and r.s == 'A' then redis.call('ZADD', K_RV, r.expires, id) end
  redis.call('HINCRBY', K_CFG, 'n_' .. state, 1)
  r.s = state; r.ended = NOW_S
  redis.call('HSET', K_T, id, pack(r))
  redis.call('ZADD', K_F, NOW_S, id)
end

-- finish() for many tickets with one HSET and one ZADD (expiry and abandon only: no revocations). Tickets
-- without a readable record are left out and counted as orphans (the caller removes every id from its
-- line). Returns the number finished.
local function finish_many(ids, recs, state)
  local hset, zadd = {}, {}
  local n = 0
  for i = 1, #ids do
    local r = parse_opt(recs[i])
    if r then
      r.s = state; r.ended = NOW_S
      hset[#hset + 1] = ids[i]; hset[#hset + 1] = pack(r)
      zadd[#zadd + 1] = NOW_S; zadd[#zadd + 1] = ids[i]
      n = n + 1
    end
  end
  count_orphans(#ids - n)
  if n == 0 then return 0 end
  redis.call('HINCRBY', K_CFG, 'n_' .. state, n)
  redis.call('HSET', K_T, unpack(hset))
  redis.call('ZADD', K_F, unpack(zadd))
  return n
end

-- When the pre-queue is placed into the line: at the start of a prequeue event, or at once if the event no
-- longer is one (its mode changed).
local function placement_time(cfg)
  if cfg.mode == 'prequeue' and NOW < cfg.start then return cfg.start end
  return NOW
end

-- Whether a join now goes to the pre-queue: before the start, and after it while the pre-queue is still
-- being placed (so everyone who joined later stands behind every lottery entrant).
local function prequeue_open(cfg)
  if cfg.mode ~= 'prequeue' then return false end
  return NOW < cfg.start or redis.call('ZCARD', K_Q) > 0
end

-- Places up to `limit` pre-queued tickets into the line, in lottery order (then join order for those who
-- came after the start): each takes the next sequence number and becomes a waiter with presence now.
-- Returns the number placed.
local function place_prequeued(cfg, limit)
  if placement_time(cfg) > NOW then return 0 end
  local popped = redis.call('ZPOPMIN', K_Q, limit)
  if #popped == 0 then return 0 end
  local got = {}
  for i = 1, #popped / 2 do got[i] = popped[2 * i - 1] end
  local raw = redis.call('HMGET', K_T, unpack(got))
  -- Orphans (no readable record) are dropped and counted; the rest take their sequence numbers in order.
  local ids, recs = {}, {}
  for i = 1, #got do
    local r = parse_opt(raw[i])
    if r then ids[#ids + 1] = got[i]; recs[#recs + 1] = r end
  end
  count_orphans(#got - #ids)
  local count = #ids
  if count == 0 then return 0 end
  local last = redis.call('HINCRBY', K_CFG, 'seq', count)
  local first = last - count + 1
  local hset, zw, zp = {}, {}, {}
  for i = 1, count do
    local r = recs[i]
    r.s = 'W'; r.seq = string.format('%.0f', first + i - 1)
    hset[#hset + 1] = ids[i]; hset[#hset + 1] = pack(r)
    zw[#zw + 1] = r.seq; zw[#zw + 1] = ids[i]
    zp[#zp + 1] = NOW_S; zp[#zp + 1] = ids[i]
  end
  redis.call('HSET', K_T, unpack(hset))
  redis.call('ZADD', K_W, unpack(zw))
  redis.call('ZADD', K_P, unpack(zp))
  return count
end

-- Persist the bucket, keep the active registry and the due index in step with the event's state.
-- Called at the end of every mutating script, so the registry changes atomically with the queue.
local function settle(cfg)
  if cfg.rate > 0 then redis.call('HSET', K_CFG, 'tok', string.format('%.17g', cfg.tok), 'tts', cfg.tts) end
  local waiting = redis.call('ZCARD', K_W)
  local admitted = redis.call('ZCARD', K_A)
  local prequeued = redis.call('ZCARD', K_Q)
  if waiting + admitted + prequeued > 0 then redis.call('SADD', K_ACTIVE, EVENT) else redis.call('SREM', K_ACTIVE, EVENT) end
  local due = nil
  local function sooner(t) if t ~= nil and (due == nil or t < due) then due = t end end
  if prequeued > 0 then sooner(placement_time(cfg)) end
  if admitted > 0 then sooner(tonumber(redis.call('ZRANGE', K_A, 0, 0, 'WITHSCORES')[2])) end
  if waiting > 0 then
    local p = redis.call('ZRANGE', K_P, 0, 0, 'WITHSCORES')
    if p[2] then sooner(tonumber(p[2]) + cfg.abandon) end
    if cfg.state ~= 'paused' and admitted < cfg.cap then
      if cfg.rate > 0 then
        local need = 1 - cfg.tok
        if need <= 0 then sooner(NOW) else sooner(cfg.tts + math.ceil(need * 60000 / cfg.rate)) end
      else
        sooner(NOW)
      end
    end
  end
  local f = redis.call('ZRANGE', K_F, 0, 0, 'WITHSCORES')
  if f[2] then sooner(tonumber(f[2]) + cfg.retention) end
  if due == nil then redis.call('ZREM', K_DUE, EVENT) else redis.call('ZADD', K_DUE, due, EVENT) end
end

-- The cheap settle of the hot paths (join, release): keeps the registry exact and lowers the due index to
-- the earliest deadline this step may have created (ZADD LT). A due entry left too early only causes one
-- extra pass, which runs the full settle. `extra` is a deadline the caller created; `admitted` the number
-- admitted in this step; `maybe_empty` asks to drop the event from the registry if it has no live ticket.
-- `busy` (join only) says the event already had other live tickets: registered, with an early enough due.
local function settle_light(cfg, extra, admitted, maybe_empty, busy)
  if cfg.rate > 0 then redis.call('HSET', K_CFG, 'tok', string.format('%.17g', cfg.tok), 'tts', cfg.tts) end
  if maybe_empty then
    if P_ADMITTED == 0 and redis.call('ZCARD', K_W) == 0 and redis.call('ZCARD', K_Q) == 0 then
      redis.call('SREM', K_ACTIVE, EVENT)
    end
  elseif not busy then
    redis.call('SADD', K_ACTIVE, EVENT)
  end
  if busy and admitted == 0 and cfg.rate <= 0 then return end
  local due = extra
  if admitted > 0 and NOW + cfg.ttl < due then due = NOW + cfg.ttl end
  if P_LIMITED then due = NOW end
  if cfg.rate > 0 and cfg.state ~= 'paused' then
    local need = 1 - cfg.tok
    local t = NOW
    if need > 0 then t = cfg.tts + math.ceil(need * 60000 / cfg.rate) end
    if t < due then due = t end
  end
  redis.call('ZADD', K_DUE, 'LT', due, EVENT)
end

-- What a caller sees of a ticket; `rank` (people ahead) is looked up unless the caller already has it.
local function rank_of(id, r)
  if r.s == 'W' then return redis.call('ZRANK', K_W, id) or -1 end
  return -1
end

local function view(id, r, rank)
  if rank == nil then rank = rank_of(id, r) end
  return { id, r.s, r.seq, r.joined, r.admitted, r.expires, r.ended, r.user, rank }
end
