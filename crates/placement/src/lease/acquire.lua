-- acquire.lua: take the lease if nobody holds it, with a new fencing token.
--
-- KEYS[1] = P:lease            "<holder>|<fence>", expires after the ttl
-- KEYS[2] = P:fence            fencing counter (INCR)
-- ARGV[1] = holder id (unique per placement process)
-- ARGV[2] = ttl, ms
--
-- Returns the fencing token, or nil when another holder has the lease. If the caller already
-- holds it, the lease is extended and its current token returned (acquire is idempotent).
--
-- Invariant: every successful acquisition by a new holder gets a token strictly greater than
-- all earlier ones, so ledger writes can refuse an ex-holder (reap.lua compares with P:fence).
-- This is `SET NX PX` + `INCR` made atomic, so no holder is ever without its token. A missing
-- counter (first start, or a Redis that restarted empty) starts at Redis TIME in ms rather
-- than 0, so tokens handed out after a data loss stay above those handed out before it and a
-- holder from before the loss is still refused.
-- Complexity: O(1).

local current = redis.call('GET', KEYS[1])
if current then
  local holder, fence = string.match(current, '^(.*)|(%d+)$')
  if holder == ARGV[1] then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return tonumber(fence)
  end
  return nil
end
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('SET', KEYS[2], string.format('%d', now_ms), 'NX')
local fence = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], ARGV[1] .. '|' .. string.format('%d', fence), 'PX', ARGV[2])
return fence
