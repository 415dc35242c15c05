-- Join the queue. ARGV[5] fresh ticket id, ARGV[6] user id ("" = anonymous).
-- Returns {"OK", created 0|1, view...}; an existing live ticket of the same user is returned unchanged.
local cfg = load_cfg()
if not cfg then return { 'UNKNOWN_EVENT' } end
if cfg.state == 'closed' then return { 'CLOSED' } end
local id, user = ARGV[5], ARGV[6]
if user ~= '' then
  local existing = redis.call('HGET', K_U, user)
  if existing then
    local rec = redis.call('HGET', K_T, existing)
    if rec then
      local r = parse(rec)
      if r.s == 'W' or r.s == 'A' or r.s == 'Q' then
        local v = view(existing, r)
        return { 'OK', 0, unpack(v) }
      end
    end
  end
end
if cfg.mode == 'reject' then return { 'REJECTED' } end
if prequeue_open(cfg) then
  -- Pre-queue: no sequence number yet. Before the start the place is a lottery number (ARGV[7], drawn by
  -- the caller, below 2^52); after it, behind every lottery entrant in join order.
  local score = ARGV[7]
  if NOW >= cfg.start then
    score = string.format('%.0f', 4503599627370496 + redis.call('HINCRBY', K_CFG, 'qn', 1))
  end
  local q = { s = 'Q', seq = '0', joined = NOW_S, admitted = '0', expires = '0', ended = '0', user = user }
  if redis.call('HSETNX', K_T, id, pack(q)) == 0 then return { 'CONFLICT', 'ticket id collision' } end
  redis.call('ZADD', K_Q, score, id)
  if user ~= '' then redis.call('HSET', K_U, user, id) end
  settle_light(cfg, placement_time(cfg), 0, false, false)
  return { 'OK', 1, unpack(view(id, q, -1)) }
end
local seq = redis.call('HINCRBY', K_CFG, 'seq', 1)
local r = { s = 'W', seq = string.format('%.0f', seq), joined = NOW_S, admitted = '0', expires = '0', ended = '0', user = user }
-- 128 random bits never collide in practice; HSETNX makes sure a collision overwrites nothing.
if redis.call('HSETNX', K_T, id, pack(r)) == 0 then
  redis.call('HINCRBY', K_CFG, 'seq', -1)
  return { 'CONFLICT', 'ticket id collision' }
end
redis.call('ZADD', K_W, seq, id)
redis.call('ZADD', K_P, NOW_S, id)
if user ~= '' then redis.call('HSET', K_U, user, id) end
local n = promote(cfg, tonumber(ARGV[4]))
if n > 0 then r = parse(redis.call('HGET', K_T, id)) end
local rank = rank_of(id, r)
-- Someone else already waiting or admitted means the event is registered and its due entry is no later
-- than this waiter's abandon deadline, so the registry and due index need no write.
local busy = rank > 0 or P_ADMITTED - n > 0
settle_light(cfg, NOW + cfg.abandon, n, false, busy)
return { 'OK', 1, unpack(view(id, r, rank)) }
