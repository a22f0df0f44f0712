-- Store re-evaluated tags of a batch of profiles and keep the tag and due indexes in step.
--
-- ARGV[1] namespace
-- ARGV[2] JSON [[profile id, profile version read, mask hex, values hex, due ms or 0], ...]:
--         the tags in mask were evaluated on the profile as of that version.
-- Keys under the namespace:
--   pf:<pid>      HASH  _v version (bumped by every fold that changes it), _tg tags (hex),
--                       _ord the profile's ordinal: its bit in every tag index
--   tag:<ordinal> STRING bitmap of the profiles that have the tag (BITCOUNT = count)
--   pord:<n>      HASH  profile ordinal -> profile id, 128 per hash (small, compact)
--   pord:next     counter of profile ordinals
--   tags:due      ZSET  profile -> when a timed tag of it may change next
-- Returns JSON [[pid, "ok", [bits added], [bits removed]] | [pid, "stale"] | [pid, "gone"]]:
-- stale means a fold changed the profile since it was read: read it again and retry.

local ns = ARGV[1]
local batch = cjson.decode(ARGV[2])
local due_key = ns .. ':tags:due'

local outs = {}
for n, item in ipairs(batch) do
  local pid, want, mask, values, due = item[1], tostring(item[2]), item[3], item[4], item[5]
  local key = ns .. ':pf:' .. pid
  local cur = redis.call('HMGET', key, '_v', '_tg', '_ord')
  if redis.call('EXISTS', key) == 0 then
    outs[n] = cjson.encode({pid, 'gone'})
  elseif (cur[1] or '0') ~= want then
    outs[n] = cjson.encode({pid, 'stale'})
  else
    local ord = cur[3]
    if not ord then
      ord = redis.call('INCR', ns .. ':pord:next')
      redis.call('HSET', ns .. ':pord:' .. math.floor(ord / 128), ord, pid)
      redis.call('HSET', key, '_ord', ord)
    end
    local before = cur[2] or ''
    local after = hex_merge(before, mask, values)
    local old, new = hex_bits(before), hex_bits(after)
    local added, removed = {}, {}
    for b in pairs(new) do
      if not old[b] then redis.call('SETBIT', ns .. ':tag:' .. b, ord, 1); table.insert(added, b) end
    end
    for b in pairs(old) do
      if not new[b] then redis.call('SETBIT', ns .. ':tag:' .. b, ord, 0); table.insert(removed, b) end
    end
    redis.call('HSET', key, '_tg', after)
    if due and due > 0 then redis.call('ZADD', due_key, due, pid) else redis.call('ZREM', due_key, pid) end
    outs[n] = cjson.encode({pid, 'ok', added, removed})
  end
end
return '[' .. table.concat(outs, ',') .. ']'
