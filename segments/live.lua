-- Evaluate a live (tag-only) segment on the tag indexes: bitmaps over profile ordinals.
--
-- ARGV[1] namespace
-- ARGV[2] JSON postfix program: ["tag", bit] pushes tag:<bit>; ["and", n] / ["or", n] pop n
--         and push their BITOP; ["not"] pops one and pushes tags:all XOR it (the profiles
--         without it); ["all"] pushes tags:all.
-- ARGV[3] "count" -> BITCOUNT of the result; "bitmap" -> the result's bytes (nil if empty).
-- The script is atomic, so its scratch keys (tmp:seg:<n>) cannot collide; it deletes them.

local ns = ARGV[1]
local program = cjson.decode(ARGV[2])
local universe = ns .. ':tags:all'
local stack, scratch = {}, {}

local function fresh()
  local key = ns .. ':tmp:seg:' .. (#scratch + 1)
  scratch[#scratch + 1] = key
  return key
end

for _, op in ipairs(program) do
  local kind = op[1]
  if kind == 'tag' then
    stack[#stack + 1] = ns .. ':tag:' .. op[2]
  elseif kind == 'all' then
    stack[#stack + 1] = universe
  elseif kind == 'and' or kind == 'or' then
    local n, args = op[2], {}
    for i = #stack - n + 1, #stack do args[#args + 1] = stack[i] end
    for _ = 1, n do stack[#stack] = nil end
    local dest = fresh()
    redis.call('BITOP', string.upper(kind), dest, unpack(args))
    stack[#stack + 1] = dest
  elseif kind == 'not' then
    local src = stack[#stack]
    stack[#stack] = nil
    local dest = fresh()
    redis.call('BITOP', 'XOR', dest, universe, src)
    redis.call('BITOP', 'AND', dest, dest, universe)
    stack[#stack + 1] = dest
  else
    return redis.error_reply('unknown op ' .. tostring(kind))
  end
end

local result = stack[#stack]
local out
if ARGV[3] == 'count' then
  out = redis.call('BITCOUNT', result)
else
  out = redis.call('GET', result)
end
if #scratch > 0 then redis.call('DEL', unpack(scratch)) end
return out
