-- remove.lua: the node leaves the ledger (its report stream ended).
--
-- KEYS[1] = P:node:<id>
-- KEYS[2] = P:nodes
-- ARGV[1] = P
-- ARGV[2] = node id
--
-- Returns 1 if the node existed, else 0 (removing an unknown node is not an error).
-- Invariant: no key keeps pointing at the node: candidate zsets, liveness index and its
-- reservations are all dropped. Complexity: O(namespaces * log N + its pending).

local existed = redis.call('EXISTS', KEYS[1])
remove_node(ARGV[1], ARGV[2])
return existed
