-- Read an event's settings and counts. Returns {"OK", cap, rate, ttl, abandon, state, retention, seq, waiting,
-- admitted, final, active 0|1, mode, failopen}.
local v = redis.call('HMGET', K_CFG, 'cap', 'rate', 'ttl', 'abandon', 'state', 'retention', 'seq', 'mode', 'failopen')
if not v[1] then return { 'UNKNOWN_EVENT' } end
return { 'OK', v[1], v[2], v[3], v[4], v[5], v[6], v[7], redis.call('ZCARD', K_W), redis.call('ZCARD', K_A),
  redis.call('ZCARD', K_F), redis.call('SISMEMBER', K_ACTIVE, EVENT), v[8] or 'fifo', v[9] or '0' }
