-- Head: the namespace's position and some rooms' retained events (a gateway reads one head for
-- several joins).
--
-- KEYS[1] seq  KEYS[2] stream  KEYS[3] epoch  KEYS[4] retained
-- ARGV[1] a fresh epoch (used when none exists)  ARGV[2] TTL in ms  ARGV[3..] rooms
-- Returns {epoch, head, {for each room: retained offset or '', event or '', data or ''}}.
-- Invariant: same as stamp.lua (a new epoch starts from an empty history). O(rooms).
local epoch = redis.call('GET', KEYS[3])
if not epoch then
  epoch = ARGV[1]
  redis.call('DEL', KEYS[1], KEYS[2], KEYS[4])
  redis.call('SET', KEYS[3], epoch, 'PX', ARGV[2])
end
local head = tonumber(redis.call('GET', KEYS[1]) or '0')
local retained = {}
for i = 3, #ARGV do
  local room = ARGV[i]
  local r = redis.call('HMGET', KEYS[4], 'o:' .. room, 'e:' .. room, 'd:' .. room)
  retained[#retained + 1] = r[1] or ''
  retained[#retained + 1] = r[2] or ''
  retained[#retained + 1] = r[3] or ''
end
return {epoch, head, retained}
