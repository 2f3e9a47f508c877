-- Stamp: give a room publish the namespace's next offset, append it to the history, keep it as
-- the room's retained event when asked, and publish it to every replica; one atomic step.
--
-- KEYS[1] seq (INCR counter)        KEYS[2] stream (entries `<offset>-0`: r, e, d)
-- KEYS[3] epoch (string)            KEYS[4] retained (hash: o:<room>, e:<room>, d:<room>)
-- KEYS[5] ids (hash: publish id -> `<offset> <epoch>`)   KEYS[6] ids of the previous generation
-- ARGV[1] a fresh epoch, used only when KEYS[3] is missing (history lost or expired)
-- ARGV[2] MAXLEN (approximate)      ARGV[3] TTL in ms (idle namespaces lose their history)
-- ARGV[4] room  ARGV[5] event  ARGV[6] data (MessagePack)  ARGV[7] '1' to retain
-- ARGV[8] PUBLISH or SPUBLISH       ARGV[9] channel  ARGV[10] the encoded frame
-- ARGV[11] publish id ('' = no deduplication)
-- Publishes `\0<offset>\n<epoch>\n<frame>` (a protobuf message never starts with byte 0).
-- Returns {offset, epoch, 1 if the publish id was already stamped (nothing done) else 0}.
-- Invariant: offsets of one epoch are 1, 2, 3, ... with no gap; the stream, the retained hash
-- and the channel see them in that order; a missing epoch key means everything else of the
-- namespace's history is gone too (it is deleted with it), so an old offset can never be
-- mistaken for a new one. Complexity: O(1) amortised (XADD with ~ trimming) + the publish.
--
-- Idempotence: a publish id already stamped in the CURRENT epoch returns its first
-- {offset, epoch} and appends, retains and publishes nothing (a gateway retrying a Stamp on
-- another relay after the first one died before answering). Ids are remembered in two
-- generations of hashes: when the current one holds more than MAXLEN ids it becomes the
-- previous one (replacing it), so at least the last MAXLEN ids (and at most 2 x MAXLEN) are
-- kept, and they expire with the rest of the namespace's history (TTL). Each id records its
-- epoch, so an id of a lost history is never answered with a stale position.
local epoch = redis.call('GET', KEYS[3])
if not epoch then
  epoch = ARGV[1]
  redis.call('DEL', KEYS[1], KEYS[2], KEYS[4], KEYS[5], KEYS[6])
  redis.call('SET', KEYS[3], epoch)
end
local id = ARGV[11]
if id ~= '' then
  local seen = redis.call('HGET', KEYS[5], id)
  if not seen then seen = redis.call('HGET', KEYS[6], id) end
  if seen then
    local sp = string.find(seen, ' ', 1, true)
    if sp and string.sub(seen, sp + 1) == epoch then
      return {tonumber(string.sub(seen, 1, sp - 1)), epoch, 1}
    end
  end
end
local offset = redis.call('INCR', KEYS[1])
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], offset .. '-0',
           'r', ARGV[4], 'e', ARGV[5], 'd', ARGV[6])
if ARGV[7] == '1' then
  redis.call('HSET', KEYS[4], 'o:' .. ARGV[4], offset, 'e:' .. ARGV[4], ARGV[5],
             'd:' .. ARGV[4], ARGV[6])
end
if id ~= '' then
  redis.call('HSET', KEYS[5], id, offset .. ' ' .. epoch)
  if redis.call('HLEN', KEYS[5]) > tonumber(ARGV[2]) then
    redis.call('RENAME', KEYS[5], KEYS[6])
  end
end
for i = 1, 6 do redis.call('PEXPIRE', KEYS[i], ARGV[3]) end
redis.call(ARGV[8], ARGV[9], '\0' .. offset .. '\n' .. epoch .. '\n' .. ARGV[10])
return {offset, epoch, 0}
