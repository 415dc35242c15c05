#!lua name=dispatcher_outbox_v1
-- The outbox relay's publish function. publish.rs loads this library (FUNCTION LOAD) and calls it once per
-- batch: FCALL dispatcher_outbox_publish 1 <stream> <maxlen> <v1..v7> <v1..v7> …
-- Each entry is seven values, stored under the field names below. Entries are added in order and the call
-- stops at the first one Redis refuses, so that a later row of the same aggregate is never added before an
-- earlier one that failed. MAXLEN 0 means no trimming.
-- Returns {added} when every entry was added, {added, error} when entry added+1 was refused.

local FIELDS = { 'message_id', 'event_id', 'event_type', 'aggregate_id', 'occurred_at', 'outbox_id', 'payload' }

redis.register_function('dispatcher_outbox_publish', function(keys, args)
  local stream = keys[1]
  local maxlen = tonumber(args[1]) or 0
  local n = #FIELDS
  local count = math.floor((#args - 1) / n)
  for i = 0, count - 1 do
    local b = 1 + i * n
    local cmd
    if maxlen > 0 then
      cmd = { 'XADD', stream, 'MAXLEN', '~', maxlen, '*' }
    else
      cmd = { 'XADD', stream, '*' }
    end
    for f = 1, n do
      cmd[#cmd + 1] = FIELDS[f]
      cmd[#cmd + 1] = args[b + f]
    end
    local ok = redis.pcall(unpack(cmd))
    if type(ok) == 'table' and ok.err then
      return { i, ok.err }
    end
  end
  return { count }
end)
