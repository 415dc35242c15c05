-- Read an event's settings and counts. Returns {"OK", cap, rate, ttl, abandon, state, retention, seq, waiting,
-- admitted, final, active 0|1, mode, failopen, then totals: admitted, completed, expired, abandoned, left,
-- revoked, pre-queued}.
local v = redis.call('HMGET', K_CFG, 'cap', 'rate', 'ttl', 'abandon', 'state', 'retention', 'seq', 'mode', 'failopen',
  'n_A', 'n_C', 'n_E', 'n_B', 'n_L', 'n_R', 'start')
if not v[1] then return { 'UNKNOWN_EVENT' } end
return { 'OK', v[1], v[2], v[3], v[4], v[5], v[6], v[7], redis.call('ZCARD', K_W), redis.call('ZCARD', K_A),
  redis.call('ZCARD', K_F), redis.call('SISMEMBER', K_ACTIVE, EVENT), v[8] or 'fifo', v[9] or '0',
  v[10] or '0', v[11] or '0', v[12] or '0', v[13] or '0', v[14] or '0', v[15] or '0',
  redis.call('ZCARD', K_Q), v[16] or '0' }
