-- register.lua: adds a node or replaces its registration.
--
-- KEYS[1] = P:node:<id>
-- KEYS[2] = P:nodes
-- ARGV[1] = P
-- ARGV[2] = node id
-- ARGV[3] = url
-- ARGV[4] = weight (>= 1)
-- ARGV[5] = capacity (0 = unlimited)
-- ARGV[6] = namespaces joined by "\n"
-- ARGV[7] = liveness window, ms
--
-- Returns 1. Invariant: nothing of an earlier registration survives (its namespaces, load,
-- drain flags and reservations are dropped); the node starts live, with zero load, and the
-- next report brings absolute figures.
--
-- Complexity: O((old + new namespaces) * log N + old pending).

local P = ARGV[1]
local id = ARGV[2]
local now = now_ms()
remove_node(P, id)
redis.call('HSET', KEYS[1], 'url', ARGV[3], 'weight', ARGV[4], 'capacity', ARGV[5],
  'namespaces', ARGV[6], 'connections', '0', 'draining_admin', '0', 'draining_report', '0',
  'full', '0', 'last_seen_ms', int(now))
redis.call('ZADD', KEYS[2], int(now), id)
rescore(P, id, now, tonumber(ARGV[7]))
return 1
