-- The live-update pass of one event: reads many tickets at once and, with ARGV[5] == "1", records presence
-- for the waiting ones (an open live connection is presence). ARGV[6..] ticket ids.
-- Returns {"OK", then per ticket either "" (unknown) or the 9 fields of view()}.
if redis.call('EXISTS', K_CFG) == 0 then return { 'UNKNOWN_EVENT' } end
local n = #ARGV - 5
if n == 0 then return { 'OK' } end
local ids = {}
for i = 1, n do ids[i] = ARGV[5 + i] end
local recs = redis.call('HMGET', K_T, unpack(ids))
local out = { 'OK' }
local touch = {}
for i = 1, n do
  local rec = recs[i]
  if not rec then
    out[#out + 1] = ''
  else
    local r = parse(rec)
    local v = view(ids[i], r)
    for j = 1, #v do out[#out + 1] = v[j] end
    if r.s == 'W' then touch[#touch + 1] = NOW_S; touch[#touch + 1] = ids[i] end
  end
end
if ARGV[5] == '1' and #touch > 0 then redis.call('ZADD', K_P, 'XX', unpack(touch)) end
return out
