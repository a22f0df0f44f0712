-- Tag bitmaps are hex strings of a big integer (bit i = the tag of ordinal i), as Python's
-- format(mask, 'x') writes them.

-- The set bits of a hex bitmap, as a table {bit index = true}.
local function hex_bits(hex)
  local out = {}
  if not hex then return out end
  local n = #hex
  for j = 1, n do
    local nib = tonumber(string.sub(hex, n - j + 1, n - j + 1), 16)
    if nib and nib > 0 then
      for b = 0, 3 do
        if bit.band(nib, bit.lshift(1, b)) ~= 0 then out[(j - 1) * 4 + b] = true end
      end
    end
  end
  return out
end

-- Remove a profile from every tag index and the due index (it was merged away or erased).
-- Returns the tag bitmap it had (hex; false when it had none).
local function untag(ns, pid)
  local key = ns .. ':pf:' .. pid
  local cur = redis.call('HMGET', key, '_tg', '_ord')
  if cur[2] then
    for b in pairs(hex_bits(cur[1] or '')) do
      redis.call('SETBIT', ns .. ':tag:' .. b, cur[2], 0)
    end
    redis.call('HDEL', ns .. ':pord:' .. math.floor(tonumber(cur[2]) / 128), cur[2])
    redis.call('SETBIT', ns .. ':tags:all', cur[2], 0)
  end
  redis.call('ZREM', ns .. ':tags:due', pid)
  return cur[2] and cur[1]
end

