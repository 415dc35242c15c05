-- Time-driven work for one event: expire admitted tickets whose session TTL passed (each exactly once),
-- drop waiters without presence for the abandon timeout, purge final tickets past retention, then admit.
-- ARGV[5] most tickets handled per kind; ARGV[6] "1" = only promote. Returns {"OK", expired, abandoned, admitted, purged}.
local cfg = load_cfg()
if not cfg then
  redis.call('ZREM', K_DUE, EVENT)
  redis.call('SREM', K_ACTIVE, EVENT)
  return { 'UNKNOWN_EVENT' }
end
local batch = tonumber(ARGV[5])
local expired, abandoned, purged = 0, 0, 0
if ARGV[6] ~= '1' then
  local ids = redis.call('ZRANGEBYSCORE', K_A, '-inf', NOW, 'LIMIT', 0, batch)
  if #ids > 0 then
    local recs = redis.call('HMGET', K_T, unpack(ids))
    finish_many(ids, recs, 'E')
    redis.call('ZREM', K_A, unpack(ids))
    expired = #ids
  end
  ids = redis.call('ZRANGEBYSCORE', K_P, '-inf', NOW - cfg.abandon, 'LIMIT', 0, batch)
  if #ids > 0 then
    local recs = redis.call('HMGET', K_T, unpack(ids))
    finish_many(ids, recs, 'B')
    redis.call('ZREM', K_P, unpack(ids))
    redis.call('ZREM', K_W, unpack(ids))
    abandoned = #ids
  end
  ids = redis.call('ZRANGEBYSCORE', K_F, '-inf', NOW - cfg.retention, 'LIMIT', 0, batch)
  if #ids > 0 then
    local recs = redis.call('HMGET', K_T, unpack(ids))
    for i = 1, #ids do
      if recs[i] then
        local r = parse(recs[i])
        if r.user ~= '' and redis.call('HGET', K_U, r.user) == ids[i] then redis.call('HDEL', K_U, r.user) end
      end
    end
    redis.call('HDEL', K_T, unpack(ids))
    redis.call('ZREM', K_F, unpack(ids))
    purged = #ids
  end
  redis.call('ZREMRANGEBYSCORE', K_RV, '-inf', NOW)
end
place_prequeued(cfg, batch)
local n = promote(cfg, tonumber(ARGV[4]))
settle(cfg)
return { 'OK', expired, abandoned, n, purged }
