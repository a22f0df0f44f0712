-- Erase profiles from Redis: what identity, profiles, tags and segments keep of them.
--
-- ARGV[1] namespace
-- ARGV[2] JSON {pids: [profile ids, merged-away ones too], ids: [their identifiers as
--         "type:value"], segments: [keys of saved segments' member sets]}
-- ARGV[3] "count" (change nothing, say what would go) or "delete"
--
-- Keys, by the room that writes them (see each room's scripts):
--   identity  p:<pid>:g graph, p:<pid>:log explain log, p:<pid>:ids/:cnt/:uq (older layout),
--             i:<type:value> holders (the pid leaves; the set goes when empty), alias
--             (merged pid -> survivor), rf:<pid>:<other or identifier>:<rule> refusal marks
--   profiles  pf:<pid> profile, its fold watermarks (fields of wmb:<pid // 32>, or wm:<pid>
--             in the older layout; profiles/watermark.lua), dirty / dirty:aging / dirty:taking
--   tags      tag:<bit> and tags:all bitmaps (the profile's ordinal bit), pord:<n> ordinal ->
--             pid, tags:due
--   segments  seg:members:<id> saved segments' members
-- Idempotent: a second call finds nothing and counts zero.
-- Returns JSON {profiles, identifiers, keys, fields}: profile hashes, identifier links
-- (holder entries), keys deleted, other entries removed (bits, index and set members).

local ns = ARGV[1]
local plan = cjson.decode(ARGV[2])
local delete = ARGV[3] == 'delete'
local function k(...) return ns .. ':' .. table.concat({ ... }, ':') end

local counts = { profiles = 0, identifiers = 0, keys = 0, fields = 0 }

local function del(key)
  if redis.call('EXISTS', key) == 1 then
    counts.keys = counts.keys + 1
    if delete then redis.call('DEL', key) end
    return true
  end
  return false
end

local function remove(kind, key, member)
  local present
  if kind == 'set' then
    present = redis.call('SISMEMBER', key, member) == 1
    if present and delete then redis.call('SREM', key, member) end
  elseif kind == 'zset' then
    present = redis.call('ZSCORE', key, member) ~= false
    if present and delete then redis.call('ZREM', key, member) end
  else
    present = redis.call('HEXISTS', key, member) == 1
    if present and delete then redis.call('HDEL', key, member) end
  end
  if present then counts.fields = counts.fields + 1 end
end

local function unbit(key, bit)
  if redis.call('GETBIT', key, bit) == 1 then
    counts.fields = counts.fields + 1
    if delete then redis.call('SETBIT', key, bit, 0) end
  end
end

local pids = {}
for _, pid in ipairs(plan.pids) do pids[pid] = true end

for _, pid in ipairs(plan.pids) do
  -- the profile and its place in the tag indexes
  local pf = k('pf', pid)
  local state = redis.call('HMGET', pf, '_ord', '_tg')
  local ord, tags = tonumber(state[1]), state[2] or ''
  if ord then
    for bit = 0, #tags * 4 - 1 do
      if redis.call('EXISTS', k('tag', bit)) == 1 then unbit(k('tag', bit), ord) end
    end
    unbit(k('tags', 'all'), ord)
    remove('hash', k('pord', math.floor(ord / 128)), tostring(ord))
  end
  if del(pf) then counts.profiles = counts.profiles + 1 end
  if delete then
    counts.fields = counts.fields + wm_delete(ns, pid)
  else
    for _ in pairs(wm_all(ns, pid)) do counts.fields = counts.fields + 1 end
  end
  remove('set', k('dirty'), pid)
  remove('set', k('dirty', 'aging'), pid)
  remove('set', k('dirty', 'taking'), pid)
  remove('zset', k('tags', 'due'), pid)
  for _, seg in ipairs(plan.segments) do remove('set', seg, pid) end

  -- identity: refusal marks named in the explain log, then the log, graph and alias
  for _, line in ipairs(redis.call('LRANGE', k('p', pid, 'log'), 0, -1)) do
    local entry = cjson.decode(line)
    if entry.decision == 'refused' and entry.rule then
      local other = entry.other
      if other == cjson.null then other = nil end
      del(k('rf', pid, other or entry.id, entry.rule))
      if other then del(k('rf', other, pid, entry.rule)) end
    end
  end
  del(k('p', pid, 'log'))
  del(k('p', pid, 'g'))
  del(k('p', pid, 'ids'))
  del(k('p', pid, 'cnt'))
  del(k('p', pid, 'uq'))
  remove('hash', k('alias'), pid)
end

-- identifiers: the erased profiles leave each holder set; a set left empty goes
for _, id in ipairs(plan.ids) do
  local key = k('i', id)
  for _, holder in ipairs(redis.call('SMEMBERS', key)) do
    if pids[holder] then
      counts.identifiers = counts.identifiers + 1
      if delete then redis.call('SREM', key, holder) end
    end
  end
  if delete and redis.call('SCARD', key) == 0 then redis.call('DEL', key) end
end

return cjson.encode(counts)
