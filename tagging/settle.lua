-- After the changes of claimed due profiles were published: release their held tags and set
-- their real next due time, unless something else moved it meanwhile (a fold re-tagged the
-- profile and stored its own due time, or the lease ended and another claim took it).
--
-- ARGV[1] namespace   ARGV[2] the lease's end (ms)
-- ARGV[3] JSON [[profile id, next due ms or 0 (none) or -1 (not evaluated: keep)], ...]
-- Returns a JSON array with the number of due times set.

local key = ARGV[1] .. ':tags:due'
local held = ARGV[1] .. ':tags:held'
local lease = tonumber(ARGV[2])
local set = 0
for _, item in ipairs(cjson.decode(ARGV[3])) do
  local pid, due = item[1], tonumber(item[2])
  redis.call('HDEL', held, pid)
  if due >= 0 and tonumber(redis.call('ZSCORE', key, pid) or '-1') == lease then
    if due > 0 then redis.call('ZADD', key, due, pid) else redis.call('ZREM', key, pid) end
    set = set + 1
  end
end
return '[' .. set .. ']'
