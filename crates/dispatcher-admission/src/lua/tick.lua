-- Time-driven work for one event: expire admitted tickets whose session TTL passed (each exactly once),
-- drop waiters without presence for the abandon timeout, purge final tickets past retention, then admit.
-- Tickets found in a line without a readable record (orphans) are dropped from it and counted; a full pass
-- reports the orphans dropped since the previous full pass (by any call) and adds them to the total n_O.
-- ARGV[5] most tickets handled per kind; ARGV[6] "1" = only promote.
-- Returns {"OK", expired, abandoned, admitted, purged, orphaned (0 when only promoting)}.
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
    expired = finish_many(ids, recs, 'E')
    redis.call('ZREM', K_A, unpack(ids))
  end
  ids = redis.call('ZRANGEBYSCORE', K_P, '-inf', NOW - cfg.abandon, 'LIMIT', 0, batch)
  if #ids > 0 then
    local recs = redis.call('HMGET', K_T, unpack(ids))
    abandoned = finish_many(ids, recs, 'B')
    redis.call('ZREM', K_P, unpack(ids))
    redis.call('ZREM', K_W, unpack(ids))
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
local orphaned = 0
if ARGV[6] ~= '1' then
  orphaned = tonumber(redis.call('HGET', K_CFG, 'o_new') or '0') or 0
  if orphaned > 0 then
    redis.call('HINCRBY', K_CFG, 'n_O', orphaned)
    redis.call('HDEL', K_CFG, 'o_new')
  end
end
return { 'OK', expired, abandoned, n, purged, orphaned }
