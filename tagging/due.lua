-- Claim profiles whose timed tags fell due: each is leased (its due time moved to now + lease)
-- so another worker does not take it too. The profile's tags at its first claim are held in
-- tags:held until the claimer has published the change (settle.lua), and the lease stays its
-- due time until then: a worker that dies after storing new tags but before publishing them
-- leaves the profile to be claimed again when the lease ends, and the change told again.
--
-- ARGV[1] namespace   ARGV[2] now ms   ARGV[3] lease ms   ARGV[4] at most this many
-- Returns a JSON array of [profile id, held tags (hex)].

local key = ARGV[1] .. ':tags:due'
local held = ARGV[1] .. ':tags:held'
local now, lease = tonumber(ARGV[2]), tonumber(ARGV[3])
local ids = redis.call('ZRANGEBYSCORE', key, '-inf', now, 'LIMIT', 0, tonumber(ARGV[4]))
if #ids == 0 then return '[]' end
local out = {}
for n, pid in ipairs(ids) do
  redis.call('ZADD', key, now + lease, pid)
  local tags = redis.call('HGET', ARGV[1] .. ':pf:' .. pid, '_tg') or ''
  redis.call('HSETNX', held, pid, tags)
  out[n] = {pid, redis.call('HGET', held, pid)}
end
return cjson.encode(out)
