-- Apply a micro-batch of events' operations to their profiles, once each (offset watermark),
-- commutatively.
--
-- ARGV[1] namespace
-- ARGV[2] the batch JSON: [[profile id the event was keyed by, raw partition, raw offset,
--         operations (see profiles/fold.py), merged profile ids to fold into the survivor first],
--         ...]
-- ARGV[3] 'r': answer the profiles changed as they stand after the call (see the end), '-': not
--
-- A profile is one hash, pf:<pid> (one key: small profiles stay in Redis's compact listpack
-- encoding, and a read is one HGETALL). Its fields, by prefix:
--   n:<x>  counters       lo:<x> minima      hi:<x> maxima       e:<x> sums of entries x
--   t:<x>  trait JSON     r:<x>  trait rank  s:<set>:<member> 1  h:<entry>:<id> amount
--   c:<x>  competing values of trait x (see candidates)
--   _v     version, bumped by every change (tag evaluation checks it)
--   _tg, _ord  tags (tagging/apply.lua)
-- Other keys under the namespace:
--   wmb:<keyed pid // 32>  HASH  "<keyed pid>:<raw partition>" -> highest raw offset
--                   applied (profiles/watermark.lua)
--   dirty           SET   profiles changed since their last history snapshot
--   erased          SET   profiles erased (privacy/erasure.py): an event resolved to one
--                   before the erasure and folded after it changes nothing
--   fold:held:<raw partition>  HASH  raw offset -> what folding it changed, kept until the
--                   processor has published its change record (ProfileStore.settle): an
--                   event redelivered after a crash between fold and publish is not folded
--                   again (watermark), but its change is answered again, marked replay,
--                   for the profile it was folded into (even if merged away since).
-- A merged-away profile also leaves the tag indexes (tagging/bits.lua untag).
-- Returns a JSON array with one {pid, applied, changed: [names], left: [[gone, tags]]} per
-- event; ``left`` has the tag bitmap of each merged-away profile that had tags (so live
-- segments can publish its exits). A held change answered again adds replay = 1 and
-- tg, the profile's tags (hex) before the fold, so the tag change can be told again too.

local ns = ARGV[1]
local batch = cjson.decode(ARGV[2])

local function k(...) return ns .. ':' .. table.concat({...}, ':') end
local alias_key = k('alias')
local dirty_key = k('dirty')
local pf = keys_under(ns .. ':pf:')
local held_key = keys_under(ns .. ':fold:held:')

-- Aliases are written by the identity script only, so they cannot change during this call.
local survivors = {}
local function resolve(pid)
  local known = survivors[pid]
  if known then return known end
  local cur = follow_alias(alias_key, pid)
  survivors[pid] = cur
  return cur
end

local changed, seen, left
local function mark(name)
  if not seen[name] then seen[name] = true; table.insert(changed, name) end
end

local function set_min(p, f, v)
  local cur = tonumber(redis.call('HGET', pf(p), f) or 'nil')
  if not cur or v < cur then redis.call('HSET', pf(p), f, v); return true end
  return false
end
local function set_max(p, f, v)
  local cur = tonumber(redis.call('HGET', pf(p), f) or 'nil')
  if not cur or v > cur then redis.call('HSET', pf(p), f, v); return true end
  return false
end
local function trait(p, name, value, r)
  local cur = redis.call('HMGET', pf(p), 'r:' .. name, 't:' .. name)
  local rank, old = tonumber(cur[1] or 'nil'), cur[2]
  if not rank or r > rank or (r == rank and old and value > old) then
    redis.call('HSET', pf(p), 'r:' .. name, r, 't:' .. name, value)
    return old ~= value
  end
  return false
end
-- Competing values of a trait (FoldRules.conflict_traits): c:<name> = JSON {value: [source
-- that last reported it, count, last seen ms]}, at most `cap` values (the least reported,
-- then the oldest, leaves). "~": [1, cap] marks a most_frequent trait: its value is the most
-- reported one. A value new beside another counts the (trait, source pair) disagreement in
-- <ns>:quality:conflicts. Counts add, so merges fold them like the other fields.
local CAP = 4
local function candidates(p, name, add, cap, frequent)
  local f = 'c:' .. name
  local raw = redis.call('HGET', pf(p), f)
  local c = raw and cjson.decode(raw) or {}
  if add['~'] then frequent, cap = add['~'][1], add['~'][2]; add['~'] = nil end
  if c['~'] then frequent, cap = 1, c['~'][2] end
  for value, e in pairs(add) do
    local cur = c[value]
    if cur then
      cur[2] = cur[2] + e[2]
      if e[3] > cur[3] or (e[3] == cur[3] and e[1] > cur[1]) then cur[1], cur[3] = e[1], e[3] end
    else
      local n, low, lowv = 1, nil, nil
      for v, x in pairs(c) do
        if v ~= '~' then
          n = n + 1
          local a, b = x[1], e[1]
          if a > b then a, b = b, a end
          redis.call('HINCRBY', k('quality', 'conflicts'), name .. '|' .. a .. '|' .. b, 1)
          if not low or x[2] < low[2] or (x[2] == low[2] and x[3] < low[3]) then low, lowv = x, v end
        end
      end
      c[value] = {e[1], e[2], e[3]}
      if n > (cap or CAP) and (low[2] < e[2] or (low[2] == e[2] and low[3] <= e[3])) then c[lowv] = nil
      elseif n > (cap or CAP) then c[value] = nil end
    end
  end
  if frequent == 1 then c['~'] = {1, cap or CAP} end
  redis.call('HSET', pf(p), f, cjson.encode(c))
  if frequent ~= 1 then return false end
  local best, bv
  for v, x in pairs(c) do
    if v ~= '~' and (not best or x[2] > best[2] or (x[2] == best[2] and (x[3] > best[3]
        or (x[3] == best[3] and v > bv)))) then best, bv = x, v end
  end
  -- Rank by count, then last seen (a count past 899 ranks as 899: exact in a double).
  return trait(p, name, bv, math.min(best[2], 899) * 10000000000000 + best[3])
end

-- An entry (an order, a refund) counts once however often it is reported; reported with
-- different amounts (a POS and an app disagreeing) it counts at the larger one, so the
-- result does not depend on which report arrives, or is merged in, first.
local function entry(p, name, id, amount)
  local key = 'h:' .. name .. ':' .. id
  local old = tonumber(redis.call('HGET', pf(p), key) or 'nil')
  if old == nil or amount > old then
    redis.call('HSET', pf(p), key, amount)
    redis.call('HINCRBY', pf(p), 'e:' .. name, amount - (old or 0))
    return true
  end
  return false
end
local function sadd(p, name, member)
  return redis.call('HSETNX', pf(p), 's:' .. name .. ':' .. member, 1) == 1
end

-- The minima and maxima of one event in two calls: read them all, write the ones that move.
local function bounds(p, list)
  if #list == 0 then return end
  local fields, known = {}, {}
  for _, op in ipairs(list) do
    if not known[op[2]] then known[op[2]] = true; table.insert(fields, op[2]) end
  end
  local cur = redis.call('HMGET', pf(p), unpack(fields))
  local best = {}
  for n, f in ipairs(fields) do best[f] = tonumber(cur[n] or 'nil') end
  for _, op in ipairs(list) do
    local f, v = op[2], op[3]
    local c = best[f]
    if c == nil or (op[1] == 'min' and v < c) or (op[1] == 'max' and v > c) then best[f] = v end
  end
  local writes = {}
  for n, f in ipairs(fields) do
    if best[f] ~= tonumber(cur[n] or 'nil') then
      mark(f)
      table.insert(writes, f)
      table.insert(writes, best[f])
    end
  end
  if #writes > 0 then redis.call('HSET', pf(p), unpack(writes)) end
end

-- "s:<set>:<member>" -> set, member ("h:<entry>:<id>" alike); names never contain ':'.
local function split(field)
  local sep = string.find(field, ':', 3, true)
  return string.sub(field, 3, sep - 1), string.sub(field, sep + 1)
end

-- Fold a merged-away profile into the survivor: the same operations, so still commutative.
local function merge(gone, into)
  if gone == into then return end
  local flat = redis.call('HGETALL', pf(gone))
  local values = {}
  for j = 1, #flat, 2 do values[flat[j]] = flat[j + 1] end
  for j = 1, #flat, 2 do
    local f, v = flat[j], flat[j + 1]
    local kind = string.sub(f, 1, 2)
    if kind == 'n:' then redis.call('HINCRBY', pf(into), f, v)
    elseif kind == 'lo' then set_min(into, f, tonumber(v))
    elseif kind == 'hi' then set_max(into, f, tonumber(v))
    elseif kind == 'r:' then
      local name = string.sub(f, 3)
      trait(into, name, values['t:' .. name], tonumber(v))
    elseif kind == 'c:' then
      candidates(into, string.sub(f, 3), cjson.decode(v), nil, 0)
    elseif kind == 's:' then
      local name, member = split(f)
      sadd(into, name, member)
    elseif kind == 'h:' then
      local name, id = split(f)
      entry(into, name, id, tonumber(v))
    end
  end
  local tags = untag(ns, gone)
  if tags and tags ~= '' and tags ~= '0' then table.insert(left, {gone, tags}) end
  redis.call('DEL', pf(gone))
  mark('merged')
end


local erasing = redis.call('EXISTS', k('erased')) == 1
local wm_older = wm_legacy(ns)

local function apply(keyed, part, off, ops, merged)
  if erasing and redis.call('SISMEMBER', k('erased'), resolve(keyed)) == 1 then
    return {pid = resolve(keyed), applied = 0, changed = {}}
  end
  if off <= wm_get(ns, keyed, part, wm_older) then
    local held = redis.call('HGET', held_key(part), off)
    if not held then return {pid = resolve(keyed), applied = 0, changed = {}} end
    local h = cjson.decode(held)
    -- The profile it was folded into, not its survivor now: the change may have been
    -- published before the crash, and told again it must be the same record.
    return {pid = h.p or resolve(keyed), applied = 0, replay = 1, changed = h.c, left = h.l,
            tg = h.t}
  end
  wm_set(ns, keyed, part, off)

  local pid = resolve(keyed)
  local tags_before = redis.call('HGET', pf(pid), '_tg') or ''
  changed, seen, left = {}, {}, {}
  if type(merged) == 'table' then
    for _, gone in ipairs(merged) do merge(gone, pid) end
  end

  local extremes = {}
  for _, op in ipairs(ops) do
    local kind = op[1]
    if kind == 'incr' then
      redis.call('HINCRBY', pf(pid), op[2], op[3]); mark(op[2])
    elseif kind == 'min' or kind == 'max' then
      table.insert(extremes, op)
    elseif kind == 'sadd' then
      if sadd(pid, op[2], op[3]) then mark(op[2]) end
    elseif kind == 'entry' then
      if entry(pid, op[2], op[3], op[4]) then mark(op[2]) end
    elseif kind == 'trait' then
      if trait(pid, op[2], op[3], op[4]) then mark('trait:' .. op[2]) end
    elseif kind == 'cand' then
      if candidates(pid, op[2], {[op[3]] = {op[4], 1, op[5]}}, op[6], op[7]) then
        mark('trait:' .. op[2])
      end
    end
  end
  bounds(pid, extremes)
  if #changed > 0 then
    redis.call('HINCRBY', pf(pid), '_v', 1)
    redis.call('SADD', dirty_key, pid)
    local held = {p = pid, c = changed, t = tags_before}
    if #left > 0 then held.l = left end
    redis.call('HSET', held_key(part), off, cjson.encode(held))
  end
  if #left == 0 then return {pid = pid, applied = 1, changed = changed} end
  return {pid = pid, applied = 1, changed = changed, left = left}
end

-- Each event's answer; with ARGV[3] = 'r', the last answer of each profile changed (or told
-- again) in this call also carries the profile as it stands after the call, as read.lua gives
-- it ("now"): the tag evaluation that follows reads nothing back.
local reading = ARGV[3] == 'r'
local answers, last = {}, {}
for n, e in ipairs(batch) do
  local a = apply(e[1], e[2], tonumber(e[3]), e[4], e[5])
  answers[n] = a
  if reading and (a.replay or #a.changed > 0) then last[a.pid] = n end
end
if reading then
  local legacy = graph_legacy(ns)
  for pid, n in pairs(last) do answers[n].now = profile_read(ns, pid, legacy, false) end
end
local outs = {}
for n, a in ipairs(answers) do outs[n] = cjson.encode(a) end
return '[' .. table.concat(outs, ',') .. ']'
