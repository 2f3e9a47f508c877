-- Head: the namespace's position and a room's retained event.
--
-- KEYS[1] seq  KEYS[2] stream  KEYS[3] epoch  KEYS[4] retained
-- ARGV[1] a fresh epoch (used when none exists)  ARGV[2] room  ARGV[3] TTL in ms
-- Returns {epoch, head, retained offset or '', retained event, retained data}.
-- Invariant: same as stamp.lua (a new epoch starts from an empty history). O(1).
local epoch = redis.call('GET', KEYS[3])
if not epoch then
  epoch = ARGV[1]
  redis.call('DEL', KEYS[1], KEYS[2], KEYS[4])
  redis.call('SET', KEYS[3], epoch, 'PX', ARGV[3])
end
local head = tonumber(redis.call('GET', KEYS[1]) or '0')
local r = redis.call('HMGET', KEYS[4], 'o:' .. ARGV[2], 'e:' .. ARGV[2], 'd:' .. ARGV[2])
return {epoch, head, r[1] or '', r[2] or '', r[3] or ''}
