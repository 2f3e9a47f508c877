-- nodes.lua: every node's view, for the admin API and tests.
--
-- KEYS[1] = P:nodes
-- ARGV[1] = P
-- ARGV[2] = liveness window, ms
--
-- Returns a list of views (see `view` in common.lua). Purges expired reservations first (up to
-- 10,000) so that `pending` counts only live ones. Complexity: O(N + purged * log N); this is
-- an operator call, not on the assignment path.

local P = ARGV[1]
local now = now_ms()
purge_expired(P, now, tonumber(ARGV[2]), 10000)
local out = {}
for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local v = view(P, id, now)
  if v then
    out[#out + 1] = v
  end
end
return out
