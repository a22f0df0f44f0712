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
local alias_key = ns .. ':alias'
local legacy = graph_legacy(ns)

local outs = {}
for n = 3, #ARGV do
  local found = profile_read(ns, follow_alias(alias_key, ARGV[n]), legacy, with_keys)
  outs[n - 2] = found and cjson.encode(found) or 'false'
end
return '[' .. table.concat(outs, ',') .. ']'
