-- Claim profiles whose timed tags fell due: each is leased (its due time moved to now + lease)
-- so another worker does not take it too; re-evaluation then stores the real next due time.
--
-- ARGV[1] namespace   ARGV[2] now ms   ARGV[3] lease ms   ARGV[4] at most this many
-- Returns a JSON array of profile ids.

local key = ARGV[1] .. ':tags:due'
local now, lease = tonumber(ARGV[2]), tonumber(ARGV[3])
local ids = redis.call('ZRANGEBYSCORE', key, '-inf', now, 'LIMIT', 0, tonumber(ARGV[4]))
for _, pid in ipairs(ids) do redis.call('ZADD', key, now + lease, pid) end
return cjson.encode(ids)
