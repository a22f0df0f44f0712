-- Apply one event's operations to its profile, once (offset watermark), commutatively.
--
-- ARGV[1] namespace   ARGV[2] profile id the event was keyed by   ARGV[3] raw partition
-- ARGV[4] raw offset  ARGV[5] operations JSON (see profiles/fold.py)
-- ARGV[6] merged profile ids JSON: fold each into the survivor first
--
-- Keys under the namespace, per profile (pid = survivor after following aliases):
--   pf:<pid>        HASH  n:* counters, lo:* minima, hi:* maxima, e:* sums of entries
--   pf:<pid>:t      HASH  trait -> JSON value      pf:<pid>:r  HASH trait -> rank
--   pf:<pid>:s:<x>  SET   members of x             pf:<pid>:h:<x> HASH entry id -> amount
--   pf:<pid>:parts  SET   which s:<x> / h:<x> exist (so a merge can move them)
--   wm:<keyed pid>  HASH  raw partition -> highest raw offset applied
-- Returns JSON {pid, applied, changed: [names]}.

local ns, keyed, part, off = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local ops = cjson.decode(ARGV[5])
local merged = cjson.decode(ARGV[6])

local function k(...) return ns .. ':' .. table.concat({...}, ':') end

local function resolve(pid)
  local cur, hops = pid, 0
  while hops < 64 do
    local nxt = redis.call('HGET', k('alias'), cur)
    if not nxt then break end
    cur, hops = nxt, hops + 1
  end
  return cur
end

local wm = tonumber(redis.call('HGET', k('wm', keyed), part) or '-1')
if off <= wm then
  return cjson.encode({pid = resolve(keyed), applied = 0, changed = {}})
end
redis.call('HSET', k('wm', keyed), part, off)

local pid = resolve(keyed)
local changed, seen = {}, {}
local function mark(name)
  if not seen[name] then seen[name] = true; table.insert(changed, name) end
end

local function set_min(p, f, v)
  local cur = tonumber(redis.call('HGET', k('pf', p), f) or 'nil')
  if not cur or v < cur then redis.call('HSET', k('pf', p), f, v); return true end
  return false
end
local function set_max(p, f, v)
  local cur = tonumber(redis.call('HGET', k('pf', p), f) or 'nil')
  if not cur or v > cur then redis.call('HSET', k('pf', p), f, v); return true end
  return false
end
local function trait(p, name, value, r)
  local cur = tonumber(redis.call('HGET', k('pf', p, 'r'), name) or 'nil')
  local old = redis.call('HGET', k('pf', p, 't'), name)
  if not cur or r > cur or (r == cur and old and value > old) then
    redis.call('HSET', k('pf', p, 'r'), name, r)
    redis.call('HSET', k('pf', p, 't'), name, value)
    return old ~= value
  end
  return false
end
local function entry(p, name, id, amount)
  redis.call('SADD', k('pf', p, 'parts'), 'h:' .. name)
  if redis.call('HSETNX', k('pf', p, 'h', name), id, amount) == 1 then
    redis.call('HINCRBY', k('pf', p), 'e:' .. name, amount)
    return true
  end
  return false
end
local function sadd(p, name, member)
  redis.call('SADD', k('pf', p, 'parts'), 's:' .. name)
  return redis.call('SADD', k('pf', p, 's', name), member) == 1
end

-- Fold a merged-away profile into the survivor: the same operations, so still commutative.
local function merge(gone, into)
  if gone == into then return end
  local main = redis.call('HGETALL', k('pf', gone))
  for j = 1, #main, 2 do
    local f, v = main[j], tonumber(main[j + 1])
    local kind = string.sub(f, 1, 2)
    if kind == 'n:' then redis.call('HINCRBY', k('pf', into), f, v)
    elseif kind == 'lo' then set_min(into, f, v)
    elseif kind == 'hi' then set_max(into, f, v) end
  end
  local ranks = redis.call('HGETALL', k('pf', gone, 'r'))
  for j = 1, #ranks, 2 do
    trait(into, ranks[j], redis.call('HGET', k('pf', gone, 't'), ranks[j]), tonumber(ranks[j + 1]))
  end
  for _, part_name in ipairs(redis.call('SMEMBERS', k('pf', gone, 'parts'))) do
    local kind, name = string.sub(part_name, 1, 1), string.sub(part_name, 3)
    if kind == 's' then
      for _, m in ipairs(redis.call('SMEMBERS', k('pf', gone, 's', name))) do sadd(into, name, m) end
      redis.call('DEL', k('pf', gone, 's', name))
    else
      local entries = redis.call('HGETALL', k('pf', gone, 'h', name))
      for j = 1, #entries, 2 do entry(into, name, entries[j], tonumber(entries[j + 1])) end
      redis.call('DEL', k('pf', gone, 'h', name))
    end
  end
  redis.call('DEL', k('pf', gone), k('pf', gone, 't'), k('pf', gone, 'r'), k('pf', gone, 'parts'))
  mark('merged')
end

if type(merged) == 'table' then
  for _, gone in ipairs(merged) do merge(gone, pid) end
end

for _, op in ipairs(ops) do
  local kind = op[1]
  if kind == 'incr' then
    redis.call('HINCRBY', k('pf', pid), op[2], op[3]); mark(op[2])
  elseif kind == 'min' then
    if set_min(pid, op[2], op[3]) then mark(op[2]) end
  elseif kind == 'max' then
    if set_max(pid, op[2], op[3]) then mark(op[2]) end
  elseif kind == 'sadd' then
    if sadd(pid, op[2], op[3]) then mark(op[2]) end
  elseif kind == 'entry' then
    if entry(pid, op[2], op[3], op[4]) then mark(op[2]) end
  elseif kind == 'trait' then
    if trait(pid, op[2], op[3], op[4]) then mark('trait:' .. op[2]) end
  end
end
return cjson.encode({pid = pid, applied = 1, changed = changed})
