-- reap.lua: the lease holder's duty: remove nodes with no report within the liveness window.
--
-- KEYS[1] = P:fence            the lease's fencing counter (lease/acquire.lua increments it)
-- KEYS[2] = P:nodes            liveness index
-- ARGV[1] = P
-- ARGV[2] = the caller's fencing token
-- ARGV[3] = liveness window, ms
--
-- Returns the ids removed, or the error reply "FENCED <current>" when the token is not the
-- current one. Invariant: only the newest lease holder writes; a holder that was paused past
-- its lease and woke up after another replica took over is refused here, inside the same
-- atomic step as the write, so it cannot corrupt the ledger.
--
-- Complexity: O(log N + reaped * (namespaces * log N + their pending)), plus a purge of up to
-- 10,000 expired reservations.

local P = ARGV[1]
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if tonumber(ARGV[2]) ~= current then
  return redis.error_reply('FENCED current fencing token is ' .. int(current))
end
local now = now_ms()
local liveness = tonumber(ARGV[3])
local ids = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', '(' .. int(now - liveness))
for _, id in ipairs(ids) do
  remove_node(P, id)
end
purge_expired(P, now, liveness, 10000)
return ids
