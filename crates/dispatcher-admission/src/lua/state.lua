-- Change only an event's state (open|paused|closed in ARGV[5]): pause, resume and close must not write back
-- the other settings they read earlier (a concurrent reconfiguration would be lost). Resuming may admit at
-- once. Returns {"OK", admitted}.
local cfg = load_cfg()
if not cfg then return { 'UNKNOWN_EVENT' } end
redis.call('HSET', K_CFG, 'state', ARGV[5])
cfg.state = ARGV[5]
if cfg.rate > 0 then refill(cfg) end
place_prequeued(cfg, tonumber(ARGV[4]))
local n = promote(cfg, tonumber(ARGV[4]))
settle(cfg)
return { 'OK', n }
