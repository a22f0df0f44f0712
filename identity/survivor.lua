-- Prepended to every script that follows merged profile ids (identity/scripts.py):
-- the survivor of a profile id, through the alias hash the identity script writes.
local function follow_alias(alias_key, pid)
  local cur, hops = pid, 0
  while hops < 64 do
    local nxt = redis.call('HGET', alias_key, cur)
    if not nxt then break end
    cur, hops = nxt, hops + 1
  end
  return cur
end

