-- Put events' fingerprints back into the retry window (a rebuild of a lost namespace), so a
-- client's retry of an event already accepted is still recognised. The same sets as
-- resolve.lua writes: ev:w:<day>:<bucket>, each kept until its day leaves the window.
--
-- ARGV[1] namespace   ARGV[2] retry window (days)   ARGV[3] today (days since the epoch)
-- ARGV[4..] triples: day the event was resolved, bucket, fingerprint
-- Returns how many fingerprints were added.

local ns, window, today = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local added = 0
for n = 4, #ARGV, 3 do
  local day = tonumber(ARGV[n])
  local keep = (day + window + 1 - today) * 86400
  if keep > 0 then
    local key = ns .. ':ev:w:' .. ARGV[n] .. ':' .. ARGV[n + 1]
    added = added + redis.call('SADD', key, ARGV[n + 2])
    if redis.call('TTL', key) < 0 then redis.call('EXPIRE', key, keep) end
  end
end
return added
