#!lua name=dispatcher_delivery_v1
-- Push delivery's Redis side. store.rs loads this library (FUNCTION LOAD REPLACE) and calls it with FCALL.
--
-- Leases: one per partition. KEYS[1] is the lease key, holding "<owner>|<epoch>" with a TTL; KEYS[2] the
-- partition's epoch counter, only ever INCRemented (the fencing token; it survives a restart with AOF).
-- Every leader-side write below (and the read transaction in store.rs) starts with the fence check: the lease key must hold exactly the caller's
-- "<owner>|<epoch>" token, so a leader whose lease ran out or was taken over is refused by Redis itself.
--
-- Consumer side: per partition and per minute of message ids, one hash maps a message id to its state:
--   "c|<owner>|<expiry unix ms>"  claimed by a consumer that is running the handler,
--   "d|<result>"                  done: the result, recorded once.

local function fence(lease_key, token)
  local cur = redis.call('GET', lease_key)
  if cur ~= token then
    return redis.error_reply('FENCED lease ' .. lease_key .. ' is not held by ' .. token)
  end
  return nil
end

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- FCALL dd_acquire 3 <lease> <epoch> <stream> <owner> <ttl_ms> <group>
-- Takes a free lease: increments the epoch, sets the lease, makes sure the consumer group exists.
-- Returns {1, epoch} when taken, {0, "<owner>|<epoch>"} when someone else holds it.
redis.register_function('dd_acquire', function(keys, args)
  local cur = redis.call('GET', keys[1])
  if cur then
    return { 0, cur }
  end
  local epoch = redis.call('INCR', keys[2])
  redis.call('SET', keys[1], args[1] .. '|' .. epoch, 'PX', args[2])
  local ok = redis.pcall('XGROUP', 'CREATE', keys[3], args[3], '0', 'MKSTREAM')
  if type(ok) == 'table' and ok.err and not string.find(ok.err, 'BUSYGROUP', 1, true) then
    return redis.error_reply(ok.err)
  end
  return { 1, epoch }
end)

-- FCALL dd_renew 1 <lease> <token> <ttl_ms>: compare-and-extend. 1 when extended, 0 when not ours.
redis.register_function('dd_renew', function(keys, args)
  if redis.call('GET', keys[1]) == args[1] then
    redis.call('PEXPIRE', keys[1], args[2])
    return 1
  end
  return 0
end)

-- FCALL dd_release 1 <lease> <token>: gives the lease up if still ours.
redis.register_function('dd_release', function(keys, args)
  if redis.call('GET', keys[1]) == args[1] then
    redis.call('DEL', keys[1])
    return 1
  end
  return 0
end)

-- (New entries are read by a WATCH/MULTI/EXEC transaction guarded by the same lease check, in
-- store.rs `Reader`: reading inside a function copies every entry into Lua and back.)

-- FCALL dd_reclaim 2 <lease> <stream> <token> <group> <consumer> <start> <count>
-- Takes over up to <count> entries that earlier epochs left pending, from <start> ("-" first, then the
-- returned cursor), keeping each one's delivery count: a takeover is not a delivery. Entries deleted
-- from the stream meanwhile are acknowledged (there is nothing left to deliver).
-- Returns {cursor ("" when done), entries as XRANGE gives them, delivery count of each entry}.
redis.register_function('dd_reclaim', function(keys, args)
  local err = fence(keys[1], args[1])
  if err then return err end
  local count = tonumber(args[5])
  local rows = redis.call('XPENDING', keys[2], args[2], args[4], '+', count)
  local entries, counts = {}, {}
  local last = nil
  for _, row in ipairs(rows) do
    local id = row[1]
    last = id
    local e = redis.call('XCLAIM', keys[2], args[2], args[3], 0, id, 'RETRYCOUNT', row[4])
    if #e > 0 and e[1] then
      entries[#entries + 1] = e[1]
      counts[#counts + 1] = row[4]
    else
      redis.call('XACK', keys[2], args[2], id)
    end
  end
  local cursor = ''
  if last and #rows >= count then cursor = '(' .. last end
  return { cursor, entries, counts }
end)

-- FCALL dd_ack 2 <lease> <stream> <token> <group> <id...>: acknowledges; returns how many were pending.
redis.register_function('dd_ack', function(keys, args)
  local err = fence(keys[1], args[1])
  if err then return err end
  local cmd = { 'XACK', keys[2], args[2] }
  for i = 3, #args do cmd[#cmd + 1] = args[i] end
  return redis.call(unpack(cmd))
end)

-- FCALL dd_retry 2 <lease> <stream> <token> <group> <consumer> [<id> <attempts>]...
-- Records a redelivery: the pending entry's delivery count becomes <attempts>. Returns how many were
-- still pending.
redis.register_function('dd_retry', function(keys, args)
  local err = fence(keys[1], args[1])
  if err then return err end
  local n = 0
  for i = 4, #args, 2 do
    local r = redis.call('XCLAIM', keys[2], args[2], args[3], 0, args[i], 'RETRYCOUNT', args[i + 1], 'JUSTID')
    n = n + #r
  end
  return n
end)

-- FCALL dd_dead 3 <lease> <stream> <dead> <token> <group> <maxlen> [<id> <attempts> <reason> <body>]...
-- Moves messages to the dead-letter stream with their reason and acknowledges them, in one step.
redis.register_function('dd_dead', function(keys, args)
  local err = fence(keys[1], args[1])
  if err then return err end
  local maxlen = tonumber(args[3]) or 0
  local n = 0
  for i = 4, #args, 4 do
    local still = redis.call('XACK', keys[2], args[2], args[i])
    if still == 1 then
      local cmd
      if maxlen > 0 then
        cmd = { 'XADD', keys[3], 'MAXLEN', '~', maxlen, '*' }
      else
        cmd = { 'XADD', keys[3], '*' }
      end
      cmd[#cmd + 1] = 'message_id'; cmd[#cmd + 1] = args[i]
      cmd[#cmd + 1] = 'stream'; cmd[#cmd + 1] = keys[2]
      cmd[#cmd + 1] = 'attempts'; cmd[#cmd + 1] = args[i + 1]
      cmd[#cmd + 1] = 'reason'; cmd[#cmd + 1] = args[i + 2]
      cmd[#cmd + 1] = 'body'; cmd[#cmd + 1] = args[i + 3]
      redis.call(unpack(cmd))
      n = n + 1
    end
  end
  return n
end)

-- FCALL dd_claim 1 <result hash> <owner> <ttl_ms> <retention_s> <id...>
-- Before a consumer runs its handler: per id, 0 = claimed for <owner> (run it), 1 = done already (just
-- acknowledge), 2 = claimed by another live consumer (wait). One HSETNX per id on the common path.
redis.register_function('dd_claim', function(keys, args)
  local key = keys[1]
  local owner = args[1]
  local now = now_ms()
  local claim = 'c|' .. owner .. '|' .. (now + tonumber(args[2]))
  local out = {}
  for i = 4, #args do
    local id = args[i]
    local state = 0
    if redis.call('HSETNX', key, id, claim) == 0 then
      local cur = redis.call('HGET', key, id)
      if string.byte(cur, 1) == 100 then -- 'd': done
        state = 1
      else
        local sep = string.find(cur, '|', 3, true)
        local held_by = string.sub(cur, 3, sep - 1)
        local expiry = tonumber(string.sub(cur, sep + 1))
        if held_by ~= owner and expiry > now then
          state = 2
        else
          redis.call('HSET', key, id, claim)
        end
      end
    end
    out[#out + 1] = state
  end
  redis.call('EXPIRE', key, args[3], 'NX')
  return out
end)

-- FCALL dd_complete 1 <result hash> <retention_s> [<id> <result>]...
-- Records each result and the message's completion in one step: 1 = recorded, 0 = it was done already
-- (the earlier result stands).
redis.register_function('dd_complete', function(keys, args)
  local key = keys[1]
  local out = {}
  for i = 2, #args, 2 do
    local id = args[i]
    local cur = redis.call('HGET', key, id)
    if cur and string.byte(cur, 1) == 100 then
      out[#out + 1] = 0
    else
      redis.call('HSET', key, id, 'd|' .. args[i + 1])
      out[#out + 1] = 1
    end
  end
  redis.call('EXPIRE', key, args[1], 'NX')
  return out
end)

-- FCALL dd_unclaim 1 <result hash> <owner> <id...>: drops our claims (the handler asked to retry).
redis.register_function('dd_unclaim', function(keys, args)
  local key = keys[1]
  local mine = 'c|' .. args[1] .. '|'
  local n = 0
  for i = 2, #args do
    local cur = redis.call('HGET', key, args[i])
    if cur and string.sub(cur, 1, #mine) == mine then
      redis.call('HDEL', key, args[i])
      n = n + 1
    end
  end
  return n
end)
