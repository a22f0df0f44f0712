-- Forget the dirty marks of profiles whose snapshot was published and is still their state.
--
-- ARGV[1] namespace
-- ARGV[2] JSON [[profile id, version (_v) and tags (_tg, hex) the snapshot shows], ...]
-- Keys under the namespace:
--   pf:<pid>  HASH  _v version (bumped by every fold that changes the profile), _tg tags
--   dirty, dirty:aging  SETs  profiles changed since their last snapshot (the history reads
--                   and stores those itself; profiles/take_changed.lua)
-- A profile changed since its snapshot (another fold, new tags) keeps its mark: the history
-- snapshots it from Redis. Returns JSON [], nothing per item.

local ns = ARGV[1]
local dirty, aging = ns .. ':dirty', ns .. ':dirty:aging'
for _, item in ipairs(cjson.decode(ARGV[2])) do
  local cur = redis.call('HMGET', ns .. ':pf:' .. item[1], '_v', '_tg')
  if (cur[1] or '0') == item[2] and (cur[2] or '') == item[3] then
    redis.call('SREM', dirty, item[1])
    redis.call('SREM', aging, item[1])
  end
end
return '[]'
