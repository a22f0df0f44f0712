-- Prepended to the scripts that read or write identity graphs (identity/scripts.py).
--
-- A profile's graph is one hash, p:<pid>:g: "=<type:value>" -> 1 for each identifier it
-- holds, "#<type>" -> how many of that type, "!<type>" -> the value of a unique type. A small
-- hash is one listpack in Redis; the three keys it replaces (a set of identifiers, which
-- Redis 7.0 stores as a hash table, and two hashes) cost ~2.5x as much per profile.

local function graph_key(ns, pid) return ns .. ':p:' .. pid .. ':g' end

-- Profiles stored before the one-hash layout kept p:<pid>:ids (set), p:<pid>:cnt and
-- p:<pid>:uq (hashes). Moves them into the hash; idempotent, and the counts follow the
-- identifiers actually moved. Returns 1 if there was anything to move.
local function graph_upgrade(ns, pid)
  local old = ns .. ':p:' .. pid
  local ids = redis.call('SMEMBERS', old .. ':ids')
  if #ids == 0 then return 0 end
  local g = graph_key(ns, pid)
  for _, id in ipairs(ids) do
    if redis.call('HSETNX', g, '=' .. id, '1') == 1 then
      redis.call('HINCRBY', g, '#' .. string.match(id, '^([^:]+):'), 1)
    end
  end
  local u = redis.call('HGETALL', old .. ':uq')
  for j = 1, #u, 2 do redis.call('HSETNX', g, '!' .. u[j], u[j + 1]) end
  redis.call('DEL', old .. ':ids', old .. ':cnt', old .. ':uq')
  return 1
end

-- True until every profile of the namespace was moved to the one-hash layout.
local function graph_legacy(ns) return redis.call('EXISTS', ns .. ':graph:v2') == 0 end

-- A profile's identifiers, unique values (type -> value) and counts (type -> n).
local function graph_read(ns, pid)
  local flat = redis.call('HGETALL', graph_key(ns, pid))
  local ids, uq, cnt = {}, {}, {}
  for j = 1, #flat, 2 do
    local f, v = flat[j], flat[j + 1]
    local kind, rest = string.sub(f, 1, 1), string.sub(f, 2)
    if kind == '=' then
      table.insert(ids, rest)
    elseif kind == '#' then
      cnt[rest] = tonumber(v)
    else
      uq[rest] = v
    end
  end
  return ids, uq, cnt
end

-- A profile's identifiers only (readers: profile reads, explain), old layout included.
local function graph_ids(ns, pid, legacy)
  local ids = {}
  for _, f in ipairs(redis.call('HKEYS', graph_key(ns, pid))) do
    if string.sub(f, 1, 1) == '=' then table.insert(ids, string.sub(f, 2)) end
  end
  if #ids == 0 and legacy then ids = redis.call('SMEMBERS', ns .. ':p:' .. pid .. ':ids') end
  return ids
end

-- A profile's identifiers and, for those stored sealed (field encryption), identifier ->
-- sealed value: what the read API opens. Old layout included (never sealed).
local function graph_ids_sealed(ns, pid, legacy)
  local ids, sealed = {}, {}
  local flat = redis.call('HGETALL', graph_key(ns, pid))
  for j = 1, #flat, 2 do
    local f = flat[j]
    if string.sub(f, 1, 1) == '=' then
      local id = string.sub(f, 2)
      table.insert(ids, id)
      if flat[j + 1] ~= '1' then sealed[id] = flat[j + 1] end
    end
  end
  if #ids == 0 and legacy then ids = redis.call('SMEMBERS', ns .. ':p:' .. pid .. ':ids') end
  return ids, sealed
end
