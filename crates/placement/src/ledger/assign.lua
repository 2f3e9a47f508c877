-- assign.lua: the atomic least-loaded pick. The script is the critical section: no two
-- assignments read the same view, so with equal weights the spread stays at most 1.
--
-- KEYS[1] = P:ns:<namespace>   candidate zset of the requested namespace
-- KEYS[2] = P:resv             reservation expiry zset
-- ARGV[1] = P (the `{sy:<cluster>}` prefix)
-- ARGV[2] = new reservation id (random, from the caller)
-- ARGV[3] = reservation ttl, ms
-- ARGV[4] = liveness window, ms
--
-- Returns {node_id, url, reservation_id, expires_at_ms}, or nil when no node qualifies.
--
-- Steps: purge a bounded batch of expired reservations (their nodes are rescored); read the
-- lowest-scored candidates a few at a time; a candidate that is unknown, stale (no report
-- within the liveness window by Redis TIME), draining or full is taken out of the zsets
-- (report, undrain and expiry put it back) and the next one is tried; the first good one gets
-- the reservation and is rescored. Ties go to the lowest node id (zset order): deterministic.
--
-- Complexity: O(log N) plus O(log N) per skipped candidate; every skipped candidate is removed,
-- so skips are paid for once, not on every call.

local P = ARGV[1]
local rid = ARGV[2]
local ttl = tonumber(ARGV[3])
local liveness = tonumber(ARGV[4])
local now = now_ms()

purge_expired(P, now, liveness, 64)

local BATCH = 8
while true do
  local ids = redis.call('ZRANGE', KEYS[1], 0, BATCH - 1)
  if #ids == 0 then
    return nil
  end
  for _, id in ipairs(ids) do
    local n = load_node(P, id)
    if n and assignable(n, now, liveness) then
      local expires = now + ttl
      redis.call('ZADD', KEYS[2], int(expires), id .. '\n' .. rid)
      redis.call('SADD', node_key(P, id) .. ':resv', rid)
      n.pending = n.pending + 1
      index(P, id, n, now, liveness)
      return { id, n.url, rid, expires }
    end
    -- Not assignable: out of every zset it is in (and out of this one even if its namespace
    -- list disagrees, so the loop always makes progress).
    if n then
      index(P, id, n, now, liveness)
    end
    redis.call('ZREM', KEYS[1], id)
  end
end
