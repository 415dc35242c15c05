-- The revocation list of an event: tickets revoked while admitted whose token has not expired yet, soonest
-- expiry first (at most ARGV[5]). Returns {"OK", ticket, expires_ms, ...}.
if redis.call('EXISTS', K_CFG) == 0 then return { 'UNKNOWN_EVENT' } end
local v = redis.call('ZRANGE', K_RV, '(' .. NOW_S, '+inf', 'BYSCORE', 'LIMIT', 0, tonumber(ARGV[5]), 'WITHSCORES')
local out = { 'OK' }
for i = 1, #v do out[#out + 1] = v[i] end
return out
