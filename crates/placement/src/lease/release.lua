-- release.lua: give the lease up early (shutdown), only if it is still ours.
--
-- KEYS[1] = P:lease
-- ARGV[1] = "<holder>|<fence>" as acquire.lua stored it
--
-- Returns 1 when released, 0 when it was not ours (anymore). Invariant: never deletes someone
-- else's lease (compare-and-delete). The fencing counter is left alone: the next holder gets
-- a greater token. Complexity: O(1).

if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
