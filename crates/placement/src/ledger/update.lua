-- update.lua: an admin change to one node: the drain flag or the weight.
--
-- KEYS[1] = P:node:<id>
-- ARGV[1] = P
-- ARGV[2] = node id
-- ARGV[3] = field: "draining_admin" ("0"/"1") or "weight" (>= 1)
-- ARGV[4] = value
-- ARGV[5] = liveness window, ms
--
-- Returns the node's view (see `view` in common.lua), or nil when the node is unknown.
-- Invariant: the node is rescored in the same step, so a drained node is out of every
-- candidate zset before the next assign runs. Complexity: O(namespaces * log N).
--
-- The admin drain flag is kept apart from the drain the gateway reports: a node is draining
-- when either says so, so a report cannot silently undo an operator's drain.

local P = ARGV[1]
local id = ARGV[2]
if redis.call('EXISTS', KEYS[1]) == 0 then
  return nil
end
local now = now_ms()
redis.call('HSET', KEYS[1], ARGV[3], ARGV[4])
rescore(P, id, now, tonumber(ARGV[5]))
return view(P, id, now)
