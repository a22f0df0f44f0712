-- Read whole profiles in one call: the survivor of each id and all its parts, consistently.
--
-- ARGV[1] namespace   ARGV[2] JSON list of set names   ARGV[3] JSON list of entry names (counted)
-- ARGV[4..] profile ids (merged ids are followed to their survivor)
-- Returns a JSON array, one item per id: false when unknown, else
-- [survivor, {main hash}, {traits}, [identifiers], {set name: [members]}, {entry name: count}].

local ns = ARGV[1]
local sets = cjson.decode(ARGV[2])
local entries = cjson.decode(ARGV[3])
local function k(...) return ns .. ':' .. table.concat({...}, ':') end
local alias_key = k('alias')

local function resolve(pid) return follow_alias(alias_key, pid) end

local function hash(key)
  local flat, out = redis.call('HGETALL', key), {}
  for j = 1, #flat, 2 do out[flat[j]] = flat[j + 1] end
  return out
end

local outs = {}
for n = 4, #ARGV do
  local pid = resolve(ARGV[n])
  local base = k('pf', pid)
  local main = hash(base)
  if next(main) == nil then
    table.insert(outs, 'false')
  else
    local members, counts = {}, {}
    for _, name in ipairs(sets) do members[name] = redis.call('SMEMBERS', base .. ':s:' .. name) end
    for _, name in ipairs(entries) do counts[name] = redis.call('HLEN', base .. ':h:' .. name) end
    table.insert(outs, cjson.encode({
      pid, main, hash(base .. ':t'), redis.call('SMEMBERS', k('p', pid, 'ids')), members, counts,
    }))
  end
end
return '[' .. table.concat(outs, ',') .. ']'
