-- Read a ticket; with ARGV[6] == "1" it is also a heartbeat (presence) of a waiting ticket.
-- ARGV[5] ticket id. Returns {"OK", view...}.
if redis.call('EXISTS', K_CFG) == 0 then return { 'UNKNOWN_EVENT' } end
local id = ARGV[5]
local rec = redis.call('HGET', K_T, id)
if not rec then return { 'UNKNOWN_TICKET' } end
local r = parse(rec)
if ARGV[6] == '1' and r.s == 'W' then redis.call('ZADD', K_P, 'XX', NOW, id) end
local v = view(id, r)
return { 'OK', unpack(v) }
