-- assign.lua: the atomic least-loaded pick. The script is the critical section: no two
-- assignments read the same view, so with equal weights the spread stays at most 1.
--
-- KEYS[1] = P:ns:<namespace>   candidate zset of the requested namespace
-- KEYS[2] = P:resv             reservation expiry zset
-- KEYS[3] = P:resv:node        reservation -> node hash
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
    local nk = node_key(P, id)
    local f = redis.call('HMGET', nk, 'url', 'capacity', 'connections', 'draining_admin',
      'draining_report', 'last_seen_ms')
    local good = false
    if f[1] then
      local capacity = tonumber(f[2])
      local load = tonumber(f[3]) + redis.call('SCARD', nk .. ':resv')
      good = f[4] == '0' and f[5] == '0'
        and (capacity == 0 or load < capacity)
        and now - tonumber(f[6]) <= liveness
    end
    if good then
      local expires = now + ttl
      redis.call('ZADD', KEYS[2], int(expires), rid)
      redis.call('HSET', KEYS[3], rid, id)
      redis.call('SADD', nk .. ':resv', rid)
      rescore(P, id, now, liveness)
      return { id, f[1], rid, expires }
    end
    -- Not assignable: out of every zset it is in (and out of this one even if its namespace
    -- list disagrees, so the loop always makes progress).
    rescore(P, id, now, liveness)
    redis.call('ZREM', KEYS[1], id)
  end
end
