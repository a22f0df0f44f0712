-- Prepended to the scripts that answer whole profiles (read.lua, and fold.lua for the profiles
-- it changed): one profile's fields, split by prefix, and its identifiers, in the table
-- ProfileStore reads (profiles/store.py: ProfileStore._stored).

local function profile_hex(s)
  return string.format(string.rep('%02x', #s), string.byte(s, 1, -1))
end

-- kid -> stored data key (hex) for every envelope ("v1.<kid>.<...>", a trait JSON-quoted).
local function profile_data_keys(ns, values, into)
  for _, v in pairs(values) do
    local at = (string.sub(v, 1, 1) == '"') and 2 or 1
    if string.sub(v, at, at + 2) == 'v1.' then
      local kid = string.sub(v, at + 3, at + 14)
      if not into[kid] then
        local raw = redis.call('HGET', ns .. ':dek:' .. string.sub(kid, 1, 2), kid)
        if raw then into[kid] = profile_hex(raw) end
      end
    end
  end
end

-- The stored profile ``pid`` (a survivor: aliases already followed), or nil when it has no
-- fields: [pid, {main fields}, {traits}, [identifiers], {set name: [members]},
-- {entry: count}, {identifier: sealed value}, {kid: stored data key, hex}]. ``with_keys``:
-- also the data keys of its sealed values, so a reader opens the profile from this answer.
local function profile_read(ns, pid, legacy, with_keys)
  local flat = redis.call('HGETALL', ns .. ':pf:' .. pid)
  if #flat == 0 then return nil end
  local main, traits, sets, counts = {}, {}, {}, {}
  -- By the prefix's bytes (t:, s:, h:, r: below), not a substring per field.
  local byte, sub, find = string.byte, string.sub, string.find
  for j = 1, #flat, 2 do
    local f, v = flat[j], flat[j + 1]
    local b1, b2 = byte(f, 1, 2)
    if b2 ~= 58 then  -- no "x:" prefix: _v, _tg, _ord
      main[f] = v
    elseif b1 == 116 then  -- t:
      traits[sub(f, 3)] = v
    elseif b1 == 115 or b1 == 104 then  -- s:, h:
      local sep = find(f, ':', 3, true)
      local name = sub(f, 3, sep - 1)
      if b1 == 115 then
        local members = sets[name]
        if not members then members = {}; sets[name] = members end
        members[#members + 1] = sub(f, sep + 1)
      else
        counts[name] = (counts[name] or 0) + 1
      end
    elseif b1 ~= 114 then  -- not r: (ranks stay in Redis)
      main[f] = v
    end
  end
  local ids, sealed = graph_ids_sealed(ns, pid, legacy)
  local keys = {}
  if with_keys then
    profile_data_keys(ns, sealed, keys)
    profile_data_keys(ns, traits, keys)
  end
  return {pid, main, traits, ids, sets, counts, sealed, keys}
end
