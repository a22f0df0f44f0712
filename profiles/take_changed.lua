-- Move the profiles changed since the last snapshot aside for the history to store.
--
-- ARGV[1] namespace   ARGV[2] 'age': keep this interval's marks one more interval, 'all': no
-- Keys under the namespace (SETs of profile ids):
--   dirty         marked since the last call (the fold, tag stores, swaps and splits add)
--   dirty:aging   marked before the last call and kept one interval: the stream processor
--                 removes those whose snapshot it published meanwhile (profiles/snapped.lua)
--   dirty:taking  being stored: taken again after a crash, until ``done_changed`` deletes it
-- With 'age' (the stream publishes snapshots) the marks of profiles in a batch still in
-- flight are not read back at once: most are published and unmarked within the interval.
-- Returns the members of dirty:taking.

local ns = ARGV[1]
local dirty, aging, taking = ns .. ':dirty', ns .. ':dirty:aging', ns .. ':dirty:taking'
if redis.call('EXISTS', taking) == 0 then
  if ARGV[2] == 'age' then
    if redis.call('EXISTS', aging) == 1 then redis.call('RENAME', aging, taking) end
    if redis.call('EXISTS', dirty) == 1 then redis.call('RENAME', dirty, aging) end
  else
    redis.call('SUNIONSTORE', taking, aging, dirty)
    redis.call('DEL', aging, dirty)
  end
end
return redis.call('SMEMBERS', taking)
