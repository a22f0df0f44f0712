-- Move profiles stored before the one-hash layout into it (see identity/graph.lua).
-- ARGV[1] namespace, ARGV[2..] profile ids. Returns how many had anything to move.
local moved = 0
for n = 2, #ARGV do moved = moved + graph_upgrade(ARGV[1], ARGV[n]) end
return moved
