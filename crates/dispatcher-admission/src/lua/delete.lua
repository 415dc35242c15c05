-- Delete an event and all its tickets. ARGV[5] "1" = even with waiting or admitted tickets. UNLINK frees
-- big structures off Redis's main thread. Returns {"OK", tickets deleted}.
if redis.call('EXISTS', K_CFG) == 0 then return { 'UNKNOWN_EVENT' } end
local live = redis.call('ZCARD', K_W) + redis.call('ZCARD', K_A) + redis.call('ZCARD', K_Q)
if live > 0 and ARGV[5] ~= '1' then return { 'CONFLICT', 'event has ' .. live .. ' waiting or admitted tickets' } end
local tickets = redis.call('HLEN', K_T)
redis.call('UNLINK', K_CFG, K_W, K_A, K_P, K_T, K_U, K_F, K_RV, K_Q)
redis.call('SREM', K_ACTIVE, EVENT)
redis.call('ZREM', K_DUE, EVENT)
redis.call('SREM', K_EVENTS, EVENT)
return { 'OK', tickets }
