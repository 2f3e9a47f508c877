-- common.lua: helpers prepended to every ledger script (redis.rs concatenates them at compile
-- time); not a script by itself.
--
-- Key layout. P is the cluster's prefix `{sy:<cluster>}`: every key carries that one hash tag,
-- so all of them live in one slot and the scripts run unchanged on Redis Cluster (scripts
-- build per-node keys from P; they are in the same slot as the declared KEYS).
--
--   P:nodes            zset  node id -> last_seen_ms          (liveness index, for reap)
--   P:node:<id>        hash  url weight capacity namespaces connections
--                            draining_admin draining_report full last_seen_ms
--   P:node:<id>:resv   set   the node's live reservation ids   (SCARD = the node's pending)
--   P:ns:<namespace>   zset  node id -> (connections + pending) / weight
--                            holds only assignable nodes: registered, not draining, not full
--                            (stale ones are removed lazily by assign, rescore and reap)
--   P:resv             zset  "<node id>\n<reservation id>" -> expires_at_ms
--                            (node ids and reservation ids never contain "\n")
--   P:fence            string, the lease's fencing counter (see lease/*.lua)
--
-- Invariant kept by every script: a reservation is in P:resv and in its node's set together
-- or in neither; a node is in a P:ns zset only if it was assignable when it was last
-- rescored, with the score of that moment.
--
-- Clock: Redis TIME, never the caller's, so replicas with skewed clocks agree.

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Integers as exact decimal strings (Lua numbers are doubles; tostring would use %.14g).
local function int(n)
  return string.format('%d', n)
end

local function node_key(P, id)
  return P .. ':node:' .. id
end

-- Namespaces are stored joined by "\n" (the Rust side refuses names containing one).
local function split_ns(s)
  local out = {}
  for ns in string.gmatch(s, '[^\n]+') do
    out[#out + 1] = ns
  end
  return out
end

-- The node's hash and pending count as a table, or nil when unknown. One HMGET + one SCARD.
local function load_node(P, id)
  local nk = node_key(P, id)
  local f = redis.call('HMGET', nk, 'url', 'weight', 'capacity', 'namespaces', 'connections',
    'draining_admin', 'draining_report', 'last_seen_ms', 'full')
  if not f[1] then
    return nil
  end
  return {
    url = f[1],
    weight = tonumber(f[2]),
    capacity = tonumber(f[3]),
    namespaces = f[4],
    connections = tonumber(f[5]),
    draining_admin = tonumber(f[6]),
    draining_report = tonumber(f[7]),
    last_seen_ms = tonumber(f[8]),
    full = tonumber(f[9]) or 0,
    pending = redis.call('SCARD', nk .. ':resv'),
  }
end

-- Not draining, not full, and reported within the liveness window (by Redis TIME).
local function assignable(n, now, liveness)
  local load = n.connections + n.pending
  return n.draining_admin == 0 and n.draining_report == 0
    and n.full == 0 and (n.capacity == 0 or load < n.capacity)
    and now - n.last_seen_ms <= liveness
end

-- Puts the node into each of its namespaces' candidate zsets with its current score, or takes
-- it out when it is not assignable. O(namespaces * log N).
local function index(P, id, n, now, liveness)
  local put = assignable(n, now, liveness)
  local score = string.format('%.17g', (n.connections + n.pending) / n.weight)
  for _, ns in ipairs(split_ns(n.namespaces)) do
    if put then
      redis.call('ZADD', P .. ':ns:' .. ns, score, id)
    else
      redis.call('ZREM', P .. ':ns:' .. ns, id)
    end
  end
end

local function rescore(P, id, now, liveness)
  local n = load_node(P, id)
  if n then
    index(P, id, n, now, liveness)
  end
end

-- Forgets one reservation of node `id`; returns true if it was live.
local function drop_reservation(P, id, rid)
  if redis.call('ZREM', P .. ':resv', id .. '\n' .. rid) == 1 then
    redis.call('SREM', node_key(P, id) .. ':resv', rid)
    return true
  end
  return false
end

-- Drops up to `limit` expired reservations and rescores their nodes. Bounded so that one call
-- stays cheap; callers run it on every write, so expiries are drained faster than assign can
-- create reservations. O(limit * log N).
local function purge_expired(P, now, liveness, limit)
  local members = redis.call('ZRANGEBYSCORE', P .. ':resv', '-inf', int(now), 'LIMIT', 0, limit)
  local touched, order = {}, {}
  for _, member in ipairs(members) do
    local id, rid = string.match(member, '^([^\n]*)\n(.*)$')
    redis.call('ZREM', P .. ':resv', member)
    if id then
      redis.call('SREM', node_key(P, id) .. ':resv', rid)
      if not touched[id] then
        touched[id] = true
        order[#order + 1] = id
      end
    end
  end
  for _, id in ipairs(order) do
    rescore(P, id, now, liveness)
  end
  return #members
end

-- Removes the node and everything that points at it. O(namespaces * log N + its pending).
local function remove_node(P, id)
  local nk = node_key(P, id)
  local nss = redis.call('HGET', nk, 'namespaces')
  if nss then
    for _, ns in ipairs(split_ns(nss)) do
      redis.call('ZREM', P .. ':ns:' .. ns, id)
    end
  end
  for _, rid in ipairs(redis.call('SMEMBERS', nk .. ':resv')) do
    redis.call('ZREM', P .. ':resv', id .. '\n' .. rid)
  end
  redis.call('DEL', nk, nk .. ':resv')
  redis.call('ZREM', P .. ':nodes', id)
end

-- The node as the admin API sees it, or false when unknown:
-- {id, url, weight, capacity, namespaces, connections, pending, draining_admin,
--  draining_report, last_report_age_ms}
local function view(P, id, now)
  local n = load_node(P, id)
  if not n then
    return false
  end
  local age = now - n.last_seen_ms
  if age < 0 then
    age = 0
  end
  return { id, n.url, n.weight, n.capacity, n.namespaces, n.connections, n.pending,
    n.draining_admin, n.draining_report, age }
end
