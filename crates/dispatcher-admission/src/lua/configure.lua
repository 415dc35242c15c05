-- Create or change an event's settings. ARGV[5..10]: capacity, rate per minute (0 = none), session TTL ms,
-- abandon timeout ms, state (open|paused|closed), retention ms, queueing mode (fifo|passthrough|reject),
-- fail open (0|1), start ms of a prequeue event (0 = none). Returns {"OK", created 0|1, admitted}.
local created = 0
if redis.call('EXISTS', K_CFG) == 0 then
  created = 1
  redis.call('HSET', K_CFG, 'seq', 0, 'created', NOW)
  redis.call('SADD', K_EVENTS, EVENT)
end
redis.call('HSET', K_CFG, 'cap', ARGV[5], 'rate', ARGV[6], 'ttl', ARGV[7], 'abandon', ARGV[8], 'state', ARGV[9],
  'retention', ARGV[10], 'mode', ARGV[11], 'failopen', ARGV[12],
  'start', ARGV[13])
local cfg = load_cfg()
if cfg.rate > 0 then
  if created == 1 or redis.call('HEXISTS', K_CFG, 'tok') == 0 then cfg.tok = bucket_size(cfg); cfg.tts = NOW end
  refill(cfg)
  cfg.tok = math.min(cfg.tok, bucket_size(cfg))
end
place_prequeued(cfg, tonumber(ARGV[4]))
local n = promote(cfg, tonumber(ARGV[4]))
settle(cfg)
return { 'OK', created, n }
