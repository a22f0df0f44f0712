-- Read whole profiles in one call: the survivor of each id and all its fields, consistently.
--
-- ARGV[1] namespace   ARGV[2..] profile ids (merged ids are followed to their survivor)
-- Returns a JSON array, one item per id: false when unknown, else
-- [survivor, {main fields}, {traits}, [identifiers], {set name: [members]}, {entry: count},
--  {identifier: sealed value}] (the profile hash's fields split by prefix, see fold.lua; the
-- sealed values of identifiers under field encryption, for the read API to open).

local ns = ARGV[1]
local function k(...) return ns .. ':' .. table.concat({...}, ':') end
local alias_key = k('alias')
local legacy = graph_legacy(ns)

local outs = {}
for n = 2, #ARGV do
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
    table.insert(outs, cjson.encode({pid, main, traits, ids, sets, counts, sealed}))
  end
end
return '[' .. table.concat(outs, ',') .. ']'
