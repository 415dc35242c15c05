-- End a ticket: ARGV[6] = "C" complete (admitted only), "L" leave (waiting or admitted), "R" revoke (any live).
-- A freed slot admits the next waiting ticket in the same atomic step. ARGV[5] ticket id.
-- Returns {"OK", changed 0|1, admitted, view...}; ending a ticket twice the same way changes nothing.
local cfg = load_cfg()
if not cfg then return { 'UNKNOWN_EVENT' } end
local id, target = ARGV[5], ARGV[6]
local rec = redis.call('HGET', K_T, id)
if not rec then return { 'UNKNOWN_TICKET' } end
local r = parse(rec)
if r.s == target then
  local v = view(id, r)
  return { 'OK', 0, 0, unpack(v) }
end
if r.s == 'A' and tonumber(r.expires) <= NOW then
  -- The session ended before this call: it expires now, exactly as the timer would have done.
  redis.call('ZREM', K_A, id)
  finish(id, r, 'E')
  local n = promote(cfg, tonumber(ARGV[4]))
  settle_light(cfg, NOW + cfg.retention, n, true, false)
  return { 'CONFLICT', 'E' }
end
if r.s ~= 'W' and r.s ~= 'A' and r.s ~= 'Q' then return { 'CONFLICT', r.s } end
if target == 'C' and r.s ~= 'A' then return { 'CONFLICT', r.s } end
if r.s == 'A' then
  redis.call('ZREM', K_A, id)
else
  redis.call('ZREM', K_W, id)
  redis.call('ZREM', K_P, id)
  if r.s == 'Q' then redis.call('ZREM', K_Q, id) end
end
finish(id, r, target)
local n = promote(cfg, tonumber(ARGV[4]))
settle_light(cfg, NOW + cfg.retention, n, true, false)
local v = view(id, r)
return { 'OK', 1, n, unpack(v) }
