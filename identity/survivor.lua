-- Prepended to every script (identity/scripts.py: load): the survivor of a profile id,
-- through the alias hash the identity script writes, and keys made once per call.
local function follow_alias(alias_key, pid)
  local cur, hops = pid, 0
  while hops < 64 do
    local nxt = redis.call('HGET', alias_key, cur)
    if not nxt then break end
    cur, hops = nxt, hops + 1
  end
  return cur
end

-- A function giving ``prefix .. id``, each key made once per script call: a script that
-- touches one key many times (a profile's fields per event) skips the concatenation.
local function keys_under(prefix)
  local made = {}
  return function(id)
    local key = made[id]
    if not key then key = prefix .. id; made[id] = key end
    return key
  end
end
