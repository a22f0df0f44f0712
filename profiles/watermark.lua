-- Prepended to the scripts that read or write fold watermarks (profiles/store.py).
--
-- A fold watermark is, per profile id events were resolved to and per raw partition, the
-- highest raw offset folded. They live in hashes of 32 profile ids each:
--   wmb:<pid // 32>  HASH  "<pid>:<raw partition>" -> offset
-- A hash of its own per profile id (wm:<pid>, the older layout) costs ~120 B in Redis, its
-- fields in a shared hash ~30 B; 32 ids of one to three partitions keep the hash a listpack.
-- The older keys are read until `cdp` has moved them (ProfileStore.upgrade_watermarks),
-- which marks the namespace with fold:wm:v2.

local WM_BUCKET = 32

local function wm_key(ns, pid)
  local n = tonumber(pid)
  if n then return ns .. ':wmb:' .. math.floor(n / WM_BUCKET) end
  return ns .. ':wmb:' .. pid
end

-- True until the namespace's older per-profile watermarks were moved.
local function wm_legacy(ns) return redis.call('EXISTS', ns .. ':fold:wm:v2') == 0 end

-- The highest offset of ``part`` folded for ``pid`` (-1 if none).
local function wm_get(ns, pid, part, legacy)
  local v = redis.call('HGET', wm_key(ns, pid), pid .. ':' .. part)
  if not v and legacy then v = redis.call('HGET', ns .. ':wm:' .. pid, part) end
  return tonumber(v or '-1')
end

local function wm_set(ns, pid, part, off)
  redis.call('HSET', wm_key(ns, pid), pid .. ':' .. part, off)
end

-- All of a profile id's watermarks: {partition = offset (string)}, older layout included.
local function wm_all(ns, pid)
  local out, prefix = {}, pid .. ':'
  local old = redis.call('HGETALL', ns .. ':wm:' .. pid)
  for j = 1, #old, 2 do out[old[j]] = old[j + 1] end
  local flat = redis.call('HGETALL', wm_key(ns, pid))
  for j = 1, #flat, 2 do
    if string.sub(flat[j], 1, #prefix) == prefix then
      local part = string.sub(flat[j], #prefix + 1)
      if not out[part] or tonumber(flat[j + 1]) > tonumber(out[part]) then
        out[part] = flat[j + 1]
      end
    end
  end
  return out
end

-- Forget a profile id's watermarks; returns how many there were.
local function wm_delete(ns, pid)
  local marks, n = wm_all(ns, pid), 0
  local fields = {}
  for part in pairs(marks) do
    table.insert(fields, pid .. ':' .. part)
    n = n + 1
  end
  if #fields > 0 then redis.call('HDEL', wm_key(ns, pid), unpack(fields)) end
  redis.call('DEL', ns .. ':wm:' .. pid)
  return n
end

-- Move a profile id's older watermark key into its bucket (the higher offset wins, so it
-- may run beside folds). Returns 1 if there was anything to move.
local function wm_upgrade(ns, pid)
  local old = ns .. ':wm:' .. pid
  local flat = redis.call('HGETALL', old)
  if #flat == 0 then return 0 end
  for j = 1, #flat, 2 do
    if wm_get(ns, pid, flat[j], false) < tonumber(flat[j + 1]) then
      wm_set(ns, pid, flat[j], flat[j + 1])
    end
  end
  redis.call('DEL', old)
  return 1
end
