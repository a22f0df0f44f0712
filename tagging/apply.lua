-- Store re-evaluated tags of a batch of profiles and keep the tag and due indexes in step.
--
-- ARGV[1] namespace
-- ARGV[2] JSON [[profile id, version read, tags read (hex), new tags (hex), [bits to set],
--               [bits to clear], due ms or 0 (none) or -1 (leave the due time: a claim's)],
--               ...]
-- Keys under the namespace:
--   pf:<pid>      HASH  _v version (bumped by every fold that changes it), _tg tags (hex),
--                       _ord the profile's ordinal: its bit in every tag index
--   tag:<ordinal> STRING bitmap of the profiles that have the tag (BITCOUNT = count)
--   tags:all      STRING bitmap of every tagged profile (the universe of live segments' "not")
--   pord:<n>      HASH  profile ordinal -> profile id, 128 per hash (small, compact)
--   pord:next     counter of profile ordinals
--   tags:due      ZSET  profile -> when a timed tag of it may change next
--   dirty         SET   profiles changed since their last history snapshot (as the fold marks
--                       them): new tags are a change the snapshot must see
-- Returns JSON ["ok" | "stale" | "gone", ...], one per item, each "ok" as ["ok", <the Redis
-- clock, microseconds>]: the profile is now exactly as read, with the new tags, at that moment
-- (a snapshot of it can be versioned by it). Stale: the profile or its tags changed since they
-- were read (a fold, or another evaluator): read again and retry.

local ns = ARGV[1]
local batch = cjson.decode(ARGV[2])
local due_key = ns .. ':tags:due'

local clock = redis.call('TIME')
local ok = '["ok",' .. clock[1] .. string.format('%06d', tonumber(clock[2])) .. ']'

local outs = {}
for n, item in ipairs(batch) do
  local pid, due = item[1], tonumber(item[7])
  local key = ns .. ':pf:' .. pid
  local cur = redis.call('HMGET', key, '_v', '_tg', '_ord')
  if redis.call('EXISTS', key) == 0 then
    outs[n] = '"gone"'
  elseif (cur[1] or '0') ~= tostring(item[2]) or (cur[2] or '') ~= item[3] then
    outs[n] = '"stale"'
  else
    local ord = cur[3]
    if not ord then
      ord = redis.call('INCR', ns .. ':pord:next')
      redis.call('HSET', ns .. ':pord:' .. math.floor(ord / 128), ord, pid)
      redis.call('HSET', key, '_ord', ord)
      redis.call('SETBIT', ns .. ':tags:all', ord, 1)
    end
    for _, b in ipairs(item[5]) do redis.call('SETBIT', ns .. ':tag:' .. b, ord, 1) end
    for _, b in ipairs(item[6]) do redis.call('SETBIT', ns .. ':tag:' .. b, ord, 0) end
    if item[4] ~= item[3] then
      redis.call('HSET', key, '_tg', item[4])
      redis.call('SADD', ns .. ':dirty', pid)
    end
    if due and due > 0 then redis.call('ZADD', due_key, due, pid)
    elseif not due or due == 0 then redis.call('ZREM', due_key, pid) end  -- -1: keep (a claim)
    outs[n] = ok
  end
end
return '[' .. table.concat(outs, ',') .. ']'
