-- report.lua: one absolute load report from a gateway.
--
-- KEYS[1] = P:node:<id>
-- KEYS[2] = P:nodes            liveness index
-- KEYS[3] = P:resv
-- ARGV[1] = P
-- ARGV[2] = node id
-- ARGV[3] = connections (absolute)
-- ARGV[4] = draining as reported by the gateway, "0" or "1"
-- ARGV[5] = liveness window, ms
-- ARGV[6] = full as reported by the gateway (out of file descriptors), "0" or "1"
-- ARGV[7..] = reservation ids consumed since the last report
--
-- Returns 1, or 0 when the node is unknown (the caller answers UnknownNode and the gateway
-- registers again: this is how a Redis that lost its state is rebuilt).
--
-- Invariant: a consumed id only stops counting if it is a live reservation of *this* node, so
-- a confused or hostile gateway cannot cancel other nodes' reservations. Figures are absolute:
-- a lost report costs nothing.
--
-- Complexity: O(consumed + namespaces * log N), plus a bounded expiry purge.

local P = ARGV[1]
local id = ARGV[2]
local liveness = tonumber(ARGV[5])
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
local now = now_ms()
purge_expired(P, now, liveness, 64)

redis.call('HSET', KEYS[1], 'connections', ARGV[3], 'draining_report', ARGV[4],
  'full', ARGV[6], 'last_seen_ms', int(now))
redis.call('ZADD', KEYS[2], int(now), id)
for i = 7, #ARGV do
  drop_reservation(P, id, ARGV[i])
end
rescore(P, id, now, liveness)
return 1
