-- Join many visitors of one event in one step (the HTTP layer coalesces concurrent joins): the same rules
-- as join.lua applied in request order, with one sequence-number increment, one write per structure and
-- one promotion for the whole batch. ARGV[5..] pairs (fresh ticket id, user id or "").
-- Returns {"OK", now, session end if admitted now, then per request: "N", seq, rank (a new ticket; rank -1
-- = admitted) | "E" + view (the user's live ticket) | "X" (refused by the queueing mode)}. New tickets are
-- answered compactly: the caller knows their ids and users. A batch refused as a whole (unknown event,
-- closed) returns that code.
local cfg = load_cfg()
if not cfg then return { 'UNKNOWN_EVENT' } end
if cfg.state == 'closed' then return { 'CLOSED' } end
-- The pre-queue takes joins one by one (each with its own lottery number).
if prequeue_open(cfg) then return { 'PREQUEUE' } end
local n = math.floor((#ARGV - 4) / 2)
local ids, users = {}, {}
for i = 1, n do ids[i] = ARGV[3 + 2 * i]; users[i] = ARGV[4 + 2 * i] end

-- Live tickets of the users who already have one.
local existing = {}
local named, named_at = {}, {}
for i = 1, n do
  if users[i] ~= '' then named[#named + 1] = users[i]; named_at[#named_at + 1] = i end
end
if #named > 0 then
  local held = redis.call('HMGET', K_U, unpack(named))
  local hid, hat = {}, {}
  for j = 1, #named do
    if held[j] then hid[#hid + 1] = held[j]; hat[#hat + 1] = named_at[j] end
  end
  if #hid > 0 then
    local recs = redis.call('HMGET', K_T, unpack(hid))
    for j = 1, #hid do
      if recs[j] then
        local r = parse(recs[j])
        if r.s == 'W' or r.s == 'A' or r.s == 'Q' then existing[hat[j]] = { hid[j], r } end
      end
    end
  end
end

-- Who gets a new ticket: no live ticket, first of its user in the batch, and a mode that takes joins.
local fresh, first_of = {}, {}
for i = 1, n do
  if not existing[i] then
    local u = users[i]
    if u == '' or not first_of[u] then
      if u ~= '' then first_of[u] = i end
      if cfg.mode ~= 'reject' then fresh[#fresh + 1] = i end
    end
  end
end

local m = #fresh
local w0 = redis.call('ZCARD', K_W)
local k = 0
local seqs = {}
if m > 0 then
  -- 128 random bits never collide in practice; if one did, nothing is written and the caller retries.
  local fids = {}
  for j = 1, m do fids[j] = ids[fresh[j]] end
  local clash = redis.call('HMGET', K_T, unpack(fids))
  for j = 1, m do
    if clash[j] then return { 'CONFLICT', 'ticket id collision' } end
  end
  local last = redis.call('HINCRBY', K_CFG, 'seq', m)
  local first = last - m + 1
  local hset, zw, zp, hu = {}, {}, {}, {}
  for j = 1, m do
    local i = fresh[j]
    local seq_s = string.format('%.0f', first + j - 1)
    seqs[i] = seq_s
    hset[#hset + 1] = ids[i]
    hset[#hset + 1] = 'W|' .. seq_s .. '|' .. NOW_S .. '|0|0|0|' .. users[i]
    zw[#zw + 1] = seq_s; zw[#zw + 1] = ids[i]
    zp[#zp + 1] = NOW_S; zp[#zp + 1] = ids[i]
    if users[i] ~= '' then hu[#hu + 1] = users[i]; hu[#hu + 1] = ids[i] end
  end
  redis.call('HSET', K_T, unpack(hset))
  redis.call('ZADD', K_W, unpack(zw))
  redis.call('ZADD', K_P, unpack(zp))
  if #hu > 0 then redis.call('HSET', K_U, unpack(hu)) end
  k = promote(cfg, tonumber(ARGV[4]))
  local busy = w0 > 0 or P_ADMITTED - k > 0
  settle_light(cfg, NOW + cfg.abandon, k, false, busy)
end

local exp_s = string.format('%.0f', NOW + cfg.ttl)
local out = { 'OK', NOW_S, exp_s }
for i = 1, n do
  local e = existing[i]
  if e then
    -- Read after the promotion: it may have admitted this waiting ticket.
    local r = e[2]
    if k > 0 then r = parse(redis.call('HGET', K_T, e[1])) end
    local v = view(e[1], r)
    out[#out + 1] = 'E'
    for x = 1, #v do out[#out + 1] = v[x] end
  elseif seqs[i] then
    -- New ticket: it joined behind the w0 waiters and the earlier new tickets of this batch; promote admitted
    -- the first k of the queue after dropping the P_ORPHANED orphans it met (all among the w0: new tickets
    -- have records).
    local place = w0 - P_ORPHANED + (tonumber(seqs[i]) - (tonumber(seqs[fresh[1]]))) -- 0-based place
    out[#out + 1] = 'N'
    out[#out + 1] = seqs[i]
    if place < k then out[#out + 1] = -1 else out[#out + 1] = place - k end
  else
    local u = users[i]
    local fi = (u ~= '') and first_of[u] or nil
    if fi and seqs[fi] and fi ~= i then
      -- A second join of the same user in this batch: the ticket made for the first.
      local rec = redis.call('HGET', K_T, ids[fi])
      local v = view(ids[fi], parse(rec))
      out[#out + 1] = 'E'
      for x = 1, #v do out[#out + 1] = v[x] end
    else
      out[#out + 1] = 'X'
    end
  end
end
return out
