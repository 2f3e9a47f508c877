-- renew.lua: extend the lease, only if it is still ours.
--
-- KEYS[1] = P:lease
-- ARGV[1] = "<holder>|<fence>" as acquire.lua stored it
-- ARGV[2] = ttl, ms
--
-- Returns 1 when renewed, 0 when the lease expired or another holder has it (the caller has
-- lost the lease and must stop its singleton duties). Invariant: never extends someone
-- else's lease. Complexity: O(1).

if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
