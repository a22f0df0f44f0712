-- Replace a group of profiles in the live namespace by what a split rebuilt for them in a
-- scratch namespace, atomically (deploy/split.py).
--
-- ARGV[1] live namespace   ARGV[2] scratch namespace
-- ARGV[3] JSON {old: [pids of the group before], new: [pids the scratch holds], gone:
--         {merged pid: survivor} (scratch aliases), wm: {pid: {partition: offset}} (the
--         group's fold watermarks when history was read), version: n (added to each new
--         profile's version, so a tag evaluation in flight sees it changed), held:
--         [ev:held:<partition> keys] (outcomes resolved and not yet settled)}
-- Returns "stale" when the group folded another event since history was read, or an event
-- resolved to it is still on its way to the fold (the split is computed again), else "ok".
-- Tags are left to the caller: the profiles come without.

local live, scratch = ARGV[1], ARGV[2]
local plan = cjson.decode(ARGV[3])
local function L(...) return live .. ':' .. table.concat({...}, ':') end
local function S(...) return scratch .. ':' .. table.concat({...}, ':') end

-- A profile id's fold watermarks as the scratch namespace left them replace the live ones.
local function copy_marks(pid)
  wm_delete(live, pid)
  for part, off in pairs(wm_all(scratch, pid)) do wm_set(live, pid, part, off) end
end

local in_group = {}
for _, pid in ipairs(plan.old) do in_group[pid] = true end
for _, key in ipairs(plan.held or {}) do
  for _, raw in ipairs(redis.call('HVALS', key)) do
    local ok, outcome = pcall(cjson.decode, raw)
    if ok and type(outcome) == 'table' and in_group[outcome.pid] then return 'stale' end
  end
end

for pid, marks in pairs(plan.wm) do
  local seen = wm_all(live, pid)
  for part, off in pairs(marks) do
    if seen[part] ~= tostring(off) then return 'stale' end
    seen[part] = nil
  end
  if next(seen) ~= nil then return 'stale' end
end

-- Out with the group as it was: identifiers' holders, tag bits, keys, aliases.
for _, pid in ipairs(plan.old) do
  local g = redis.call('HGETALL', graph_key(live, pid))
  for j = 1, #g, 2 do
    if string.sub(g[j], 1, 1) == '=' then redis.call('SREM', L('i', string.sub(g[j], 2)), pid) end
  end
  untag(live, pid)
  redis.call('DEL', graph_key(live, pid), L('p', pid, 'log'), L('pf', pid))
  wm_delete(live, pid)
  redis.call('HDEL', L('alias'), pid)
end

-- In with the group as the split made it.
for _, pid in ipairs(plan.new) do
  for _, key in ipairs({graph_key(scratch, pid), S('p', pid, 'log'), S('pf', pid)}) do
    local dump = redis.call('DUMP', key)
    if dump then
      redis.call('RESTORE', live .. string.sub(key, #scratch + 1), 0, dump, 'REPLACE')
    end
  end
  copy_marks(pid)
  local g = redis.call('HGETALL', graph_key(live, pid))
  for j = 1, #g, 2 do
    if string.sub(g[j], 1, 1) == '=' then redis.call('SADD', L('i', string.sub(g[j], 2)), pid) end
  end
  if redis.call('EXISTS', L('pf', pid)) == 1 then
    redis.call('HDEL', L('pf', pid), '_tg', '_ord')
    redis.call('HINCRBY', L('pf', pid), '_v', plan.version)
    redis.call('SADD', L('dirty'), pid)
  end
end
for gone, into in pairs(plan.gone) do
  redis.call('HSET', L('alias'), gone, into)
  copy_marks(gone)
end
return 'ok'
