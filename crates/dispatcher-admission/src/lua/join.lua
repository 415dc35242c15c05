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
if redis.call('HEXISTS', K_T, id) == 1 then return { 'CONFLICT', 'ticket id collision' } end
local seq = redis.call('HINCRBY', K_CFG, 'seq', 1)
local r = { s = 'W', seq = seq, joined = NOW, admitted = 0, expires = 0, ended = 0, user = user }
redis.call('HSET', K_T, id, pack(r))
redis.call('ZADD', K_W, seq, id)
redis.call('ZADD', K_P, NOW, id)
if user ~= '' then redis.call('HSET', K_U, user, id) end
if promote(cfg, tonumber(ARGV[4])) > 0 then r = parse(redis.call('HGET', K_T, id)) end
settle(cfg)
local v = view(id, r)
return { 'OK', 1, unpack(v) }
