-- End many tickets of one event in one step (a shop completing a batch of checkouts, or concurrent
-- per-request releases coalesced): ARGV[5] = "C", "L" or "R" as in release.lua, ARGV[6] = "1" to answer each
-- ticket's view too, ARGV[7..] ticket ids (duplicates count once). Freed slots admit the next waiting tickets
-- in the same step. Returns {"OK", changed, admitted, outcome per id..., [view per id]} with outcome "C"
-- (ended now), "=" (already in that state), "U" (unknown ticket) or "X<state>" (conflict); a view is the 9
-- fields of view() for "C" and "=", "" otherwise.
local cfg = load_cfg()
if not cfg then return { 'UNKNOWN_EVENT' } end
local target = ARGV[5]
local with_views = ARGV[6] == '1'
local ids = {}
for i = 7, #ARGV do ids[#ids + 1] = ARGV[i] end
if #ids == 0 then return { 'OK', 0, 0 } end
local recs = redis.call('HMGET', K_T, unpack(ids))
local out, seen, seen_at, changed = {}, {}, {}, 0
local final = {} -- per id: the record after this step, for the views
local zrem_a, zrem_w, hset, zadd_f, rv = {}, {}, {}, {}, {}
local expired = 0
for i = 1, #ids do
  local id, rec = ids[i], recs[i]
  if seen[id] then
    out[i] = seen[id] == 'C' and '=' or seen[id]
    final[i] = final[seen_at[id]]
  elseif not rec then
    out[i] = 'U'
  else
    local r = parse(rec)
    if r.s == target then
      out[i] = '='
      final[i] = r
    elseif r.s == 'A' and tonumber(r.expires) <= NOW then
      -- The session ended before this call: it expires now, as the timer would have done.
      zrem_a[#zrem_a + 1] = id
      r.s = 'E'; r.ended = NOW_S
      hset[#hset + 1] = id; hset[#hset + 1] = pack(r)
      zadd_f[#zadd_f + 1] = NOW_S; zadd_f[#zadd_f + 1] = id
      out[i] = 'XE'
      expired = expired + 1
    elseif (r.s ~= 'W' and r.s ~= 'A' and r.s ~= 'Q') or (target == 'C' and r.s ~= 'A') then
      out[i] = 'X' .. r.s
    else
      if r.s == 'A' then zrem_a[#zrem_a + 1] = id else zrem_w[#zrem_w + 1] = id end
      if r.s == 'A' and target == 'R' then rv[#rv + 1] = r.expires; rv[#rv + 1] = id end
      r.s = target; r.ended = NOW_S
      hset[#hset + 1] = id; hset[#hset + 1] = pack(r)
      zadd_f[#zadd_f + 1] = NOW_S; zadd_f[#zadd_f + 1] = id
      out[i] = 'C'
      final[i] = r
      changed = changed + 1
    end
  end
  if not seen[id] then seen[id] = out[i]; seen_at[id] = i end
end
-- Appends the views (released and already-released tickets are final: no rank to look up).
local function answer(reply)
  if with_views then
    for i = 1, #ids do
      local r = final[i]
      if r then
        local v = view(ids[i], r, -1)
        for j = 1, #v do reply[#reply + 1] = v[j] end
      else
        reply[#reply + 1] = ''
      end
    end
  end
  return reply
end
if #zadd_f == 0 then return answer({ 'OK', 0, 0, unpack(out) }) end
if #zrem_a > 0 then redis.call('ZREM', K_A, unpack(zrem_a)) end
if #zrem_w > 0 then
  redis.call('ZREM', K_W, unpack(zrem_w))
  redis.call('ZREM', K_P, unpack(zrem_w))
  redis.call('ZREM', K_Q, unpack(zrem_w))
end
redis.call('HSET', K_T, unpack(hset))
redis.call('ZADD', K_F, unpack(zadd_f))
if #rv > 0 then redis.call('ZADD', K_RV, unpack(rv)) end
if changed > 0 then redis.call('HINCRBY', K_CFG, 'n_' .. target, changed) end
if expired > 0 then redis.call('HINCRBY', K_CFG, 'n_E', expired) end
local n = promote(cfg, tonumber(ARGV[4]))
settle_light(cfg, NOW + cfg.retention, n, true, false)
return answer({ 'OK', changed, n, unpack(out) })
