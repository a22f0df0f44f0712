-- Read whole profiles in one call: the survivor of each id and all its fields, consistently.
--
-- ARGV[1] namespace   ARGV[2] 'k': also the data keys of the sealed values, '-': not
-- ARGV[3..] profile ids (merged ids are followed to their survivor)
-- Returns a JSON array, one item per id: false when unknown, else
-- [survivor, {main fields}, {traits}, [identifiers], {set name: [members]}, {entry: count},
--  {identifier: sealed value}, {kid: stored data key, hex}] (the profile hash's fields split
-- by prefix, see fold.lua; under field encryption the sealed values of identifiers and, with
-- 'k', the data keys that open them and the sealed traits: a read opens a profile in one call).

local ns = ARGV[1]
local with_keys = ARGV[2] == 'k'
local function k(...) return ns .. ':' .. table.concat({...}, ':') end
local alias_key = k('alias')
local legacy = graph_legacy(ns)

local function hex(s) return string.format(string.rep('%02x', #s), string.byte(s, 1, -1)) end

-- kid -> stored data key (hex) for every envelope ("v1.<kid>.<...>", a trait JSON-quoted).
local function data_keys(values, into)
  for _, v in pairs(values) do
    local at = (string.sub(v, 1, 1) == '"') and 2 or 1
    if string.sub(v, at, at + 2) == 'v1.' then
      local kid = string.sub(v, at + 3, at + 14)
      if not into[kid] then
        local raw = redis.call('HGET', ns .. ':dek:' .. string.sub(kid, 1, 2), kid)
        if raw then into[kid] = hex(raw) end
      end
    end
  end
end

local outs = {}
for n = 3, #ARGV do
  local pid = follow_alias(alias_key, ARGV[n])
  local flat = redis.call('HGETALL', k('pf', pid))
  if #flat == 0 then
    table.insert(outs, 'false')
  else
    local main, traits, sets, counts = {}, {}, {}, {}
    for j = 1, #flat, 2 do
      local f, v = flat[j], flat[j + 1]
      local kind = string.sub(f, 1, 2)
      if kind == 't:' then
        traits[string.sub(f, 3)] = v
      elseif kind == 's:' or kind == 'h:' then
        local sep = string.find(f, ':', 3, true)
        local name = string.sub(f, 3, sep - 1)
        if kind == 's:' then
          local members = sets[name]
          if not members then members = {}; sets[name] = members end
          table.insert(members, string.sub(f, sep + 1))
        else
          counts[name] = (counts[name] or 0) + 1
        end
      elseif kind ~= 'r:' then
        main[f] = v
      end
    end
    local ids, sealed = graph_ids_sealed(ns, pid, legacy)
    local keys = {}
    if with_keys then
      data_keys(sealed, keys)
      data_keys(traits, keys)
    end
    table.insert(outs, cjson.encode({pid, main, traits, ids, sets, counts, sealed, keys}))
  end
end
return '[' .. table.concat(outs, ',') .. ']'
