#!/usr/bin/env node
/**
 * JSON-lines driver over socket.io-client, spawned by the end-to-end tests
 * (`crates/gateway/tests/support`). One process manages many clients (hundreds).
 *
 * stdin: one command per line. Every command may carry `req` (any JSON); its answer is
 * `{"type":"result","req":..,"ok":true,...}` or `{"type":"result","req":..,"ok":false,"error":".."}`.
 *
 *   {"cmd":"connect","id":"c1","placement":"http://..","namespace":"/","transports":["websocket"],"useHelper":true}
 *       helper client (src/switchyard.mjs): assigns, connects, re-assigns on every loss.
 *       With "useHelper":false: one assign, one plain io() connection, no reconnect.
 *   {"cmd":"connect_many","prefix":"c","count":300, ...same fields as connect}
 *       ids are prefix0..prefixN-1; connections are started one after another (no waiting).
 *   {"cmd":"connect_raw","id":"r1","url":"http://gw","namespace":"/","token":"..","transports":[..]}
 *       plain io() with auth {token} (omitted when token is null), no reconnect.
 *   Every connect command may carry "connect_to": {"<host>:<port>": "<ip>:<port>", ...}, curl's
 *       --connect-to as a map: a TCP connection for that host and port goes to that address
 *       instead, while the URL, the Host header, TLS SNI and certificate checks keep the public
 *       name. A key "*.example.com:443" matches one label under example.com. For names that do
 *       not resolve here (the Kubernetes overlays' Ingress hosts, run locally by
 *       `cargo xtask k8s run`); it applies to /v1/assign, polling and websocket alike. Trust a
 *       test CA with NODE_EXTRA_CA_CERTS.
 *   {"cmd":"join","id":"c1","room":"r"}           -> result {ack}
 *   {"cmd":"leave","id":"c1","room":"r"}          -> result {ack}
 *   {"cmd":"publish","id":"c1","room":"r","event":"e","data":..,"retain":false} -> result {ack}
 *   {"cmd":"emit","id":"c1","event":"e","args":[..],"ack":true}             -> result {ack}
 *   {"cmd":"count"}    -> result {clients, connected, by_node:{node:n}, states:{state:n}}
 *   {"cmd":"info","id":"c1"} -> result {state, node_id, url, rooms, position, recovered, connections, last_error}
 *   {"cmd":"close","id":"c1"} (or without id: every client) -> result
 *   {"cmd":"exit"}     closes everything and exits 0 (so does end of stdin)
 *
 * stdout events (besides results), each with "type":"event","id","event","t" (ms since the epoch):
 *   assigned {node_id,url} | connected {node_id,url,sid} | reconnected {node_id,url,attempts}
 *   connect_error {message,data,reason} | disconnect {reason} | recv {name,args}
 *   (a server event that asks for an ack is answered at once with {ok: true, id})
 *   rejoin_error {room,ack} | resumed {recovered,replayed,epoch,offset} | resync {rooms}
 *
 * Binary data: a JSON object {"$bin":"<base64>"} is sent as a Buffer, and a received
 * Buffer/ArrayBuffer is reported as {"$bin":"<base64>"}.
 */
import http from "node:http";
import https from "node:https";
import { createInterface } from "node:readline";
import { io } from "socket.io-client";
import { assign, connect, refusalReason } from "../src/switchyard.mjs";

/** @type {Map<string, any>} */
const clients = new Map();

function out(obj) {
  process.stdout.write(JSON.stringify(obj) + "\n");
}

function event(id, name, fields = {}) {
  out({ type: "event", id, event: name, t: Date.now(), ...fields });
}

/** JSON -> wire: {"$bin": base64} becomes a Buffer. */
function decode(v) {
  if (Array.isArray(v)) return v.map(decode);
  if (v && typeof v === "object") {
    if (typeof v.$bin === "string" && Object.keys(v).length === 1) return Buffer.from(v.$bin, "base64");
    return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, decode(x)]));
  }
  return v;
}

/** wire -> JSON: binary becomes {"$bin": base64}. */
function encode(v) {
  if (Buffer.isBuffer(v)) return { $bin: v.toString("base64") };
  if (v instanceof ArrayBuffer) return { $bin: Buffer.from(v).toString("base64") };
  if (ArrayBuffer.isView(v)) return { $bin: Buffer.from(v.buffer, v.byteOffset, v.byteLength).toString("base64") };
  if (Array.isArray(v)) return v.map(encode);
  if (v && typeof v === "object") return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, encode(x)]));
  return v;
}

/** "host:port" -> {host, port}; "[::1]:80" works too. */
function splitHostPort(s) {
  const at = s.lastIndexOf(":");
  return { host: s.slice(0, at).replace(/^\[|\]$/g, ""), port: Number(s.slice(at + 1)) };
}

/** Where a connection to host:port goes under a connect_to map, or null for "as usual". */
function routeOf(connectTo, host, port) {
  const exact = connectTo[`${host}:${port}`];
  if (exact) return splitHostPort(exact);
  for (const [key, target] of Object.entries(connectTo)) {
    const k = splitHostPort(key);
    if (!k.host.startsWith("*.") || k.port !== Number(port)) continue;
    const suffix = k.host.slice(1);
    const label = host.endsWith(suffix) ? host.slice(0, -suffix.length) : "";
    if (label && !label.includes(".")) return splitHostPort(target);
  }
  return null;
}

/** http/https agents that dial per a connect_to map; null without one. One pair per map. */
const routedAgents = new Map();
function agentsFor(connectTo) {
  if (!connectTo || Object.keys(connectTo).length === 0) return null;
  const key = JSON.stringify(connectTo);
  if (routedAgents.has(key)) return routedAgents.get(key);
  // Agent.createSocket has already set `servername` from the public host name, so TLS (SNI and
  // the certificate check) keeps it; only the TCP destination changes.
  const reroute = (options, defaultPort) => {
    const target = routeOf(connectTo, options.host, options.port ?? defaultPort);
    return target ? { ...options, host: target.host, port: target.port } : options;
  };
  class RoutedHttp extends http.Agent {
    createConnection(options, cb) {
      return super.createConnection(reroute(options, 80), cb);
    }
  }
  class RoutedHttps extends https.Agent {
    createConnection(options, cb) {
      return super.createConnection(reroute(options, 443), cb);
    }
  }
  const agents = { http: new RoutedHttp(), https: new RoutedHttps() };
  routedAgents.set(key, agents);
  return agents;
}

function agentFor(agents, url) {
  if (!agents) return undefined;
  return url.startsWith("https:") || url.startsWith("wss:") ? agents.https : agents.http;
}

/** A fetch (enough of it for assign()) over node:http(s) with the routed agents. */
function routedFetch(agents) {
  if (!agents) return undefined;
  return (url, init = {}) =>
    new Promise((resolve, reject) => {
      const u = new URL(url);
      const mod = u.protocol === "https:" ? https : http;
      const req = mod.request(u, { method: init.method ?? "GET", headers: init.headers, agent: agentFor(agents, u.href) }, (res) => {
        const chunks = [];
        res.on("data", (c) => chunks.push(c));
        res.on("error", reject);
        res.on("end", () => {
          const body = Buffer.concat(chunks).toString("utf8");
          resolve({
            status: res.statusCode,
            ok: res.statusCode >= 200 && res.statusCode < 300,
            json: async () => JSON.parse(body),
            text: async () => body,
          });
        });
      });
      req.on("error", reject);
      req.end();
    });
}

/** io() with the agent a connect_to map asks for. */
function routedIo(agents) {
  return (url, opts) => io(url, agents ? { ...opts, agent: agentFor(agents, url) } : opts);
}

function errorFields(err) {
  return { message: String(err?.message ?? err), data: encode(err?.data ?? null), reason: refusalReason(err) };
}

function nsUrl(url, namespace = "/") {
  const ns = namespace === "/" ? "/" : `/${namespace.replace(/^\/+/, "")}`;
  return url.replace(/\/+$/, "") + ns;
}

/** Attach reporting to a plain socket.io-client socket. */
function wireRaw(entry, socket) {
  entry.socket = socket;
  socket.onAny((name, ...args) => {
    if (typeof args[args.length - 1] === "function") args.pop()({ ok: true, id: entry.id });
    event(entry.id, "recv", { name, args: encode(args) });
  });
  socket.on("connect", () => {
    entry.state = "connected";
    entry.connections += 1;
    event(entry.id, "connected", { node_id: entry.nodeId, url: entry.url, sid: socket.id });
  });
  socket.on("connect_error", (err) => {
    entry.state = "failed";
    entry.lastError = errorFields(err);
    event(entry.id, "connect_error", entry.lastError);
    socket.close();
  });
  socket.on("disconnect", (reason) => {
    if (entry.state !== "closed") entry.state = "disconnected";
    event(entry.id, "disconnect", { reason });
  });
}

function newEntry(id, kind) {
  if (clients.has(id)) throw new Error(`client ${id} exists`);
  const entry = { id, kind, state: "connecting", nodeId: null, url: null, connections: 0, lastError: null, rooms: new Set() };
  clients.set(id, entry);
  return entry;
}

function startHelper(id, c) {
  const entry = newEntry(id, "helper");
  const agents = agentsFor(c.connect_to);
  const client = connect({
    io: routedIo(agents),
    fetch: routedFetch(agents),
    placementUrl: c.placement,
    namespace: c.namespace ?? "/",
    transports: c.transports,
    ackTimeoutMs: c.ack_timeout_ms,
  });
  entry.client = client;
  client.on("assigned", (a) => event(id, "assigned", { node_id: a.node_id, url: a.url }));
  client.on("connect", (i) => {
    entry.state = "connected";
    entry.connections += 1;
    entry.nodeId = i.nodeId;
    entry.url = i.url;
    event(id, "connected", { node_id: i.nodeId, url: i.url, sid: client.socket?.id });
  });
  client.on("reconnected", (i) => {
    entry.state = "connected";
    entry.connections += 1;
    entry.nodeId = i.nodeId;
    entry.url = i.url;
    event(id, "reconnected", { node_id: i.nodeId, url: i.url, attempts: i.attempts, sid: client.socket?.id });
  });
  client.on("disconnect", (reason) => {
    if (entry.state !== "closed") entry.state = "reconnecting";
    event(id, "disconnect", { reason, node_id: entry.nodeId });
  });
  client.on("connect_error", ({ error, reason }) => {
    entry.lastError = { ...errorFields(error), reason };
    event(id, "connect_error", entry.lastError);
  });
  client.on("rejoin_error", ({ room, ack }) => event(id, "rejoin_error", { room, ack: encode(ack) }));
  client.on("resumed", (r) => event(id, "resumed", r));
  client.on("resync", ({ rooms }) => event(id, "resync", { rooms }));
  client.onAny((name, ...args) => {
    const ack = typeof args[args.length - 1] === "function" ? args.pop() : null;
    if (ack) ack({ ok: true, id });
    event(id, "recv", { name, args: encode(args) });
  });
}

async function startPlain(id, c) {
  const entry = newEntry(id, "plain");
  const agents = agentsFor(c.connect_to);
  try {
    const a = await assign(c.placement, c.namespace ?? "/", routedFetch(agents) ?? globalThis.fetch);
    entry.nodeId = a.node_id;
    entry.url = a.url;
    event(id, "assigned", { node_id: a.node_id, url: a.url });
    wireRaw(entry, routedIo(agents)(nsUrl(a.url, c.namespace), { auth: { token: a.token }, transports: c.transports, reconnection: false, forceNew: true }));
  } catch (err) {
    entry.state = "failed";
    entry.lastError = errorFields(err);
    event(id, "connect_error", entry.lastError);
  }
}

function startRaw(id, c) {
  const entry = newEntry(id, "raw");
  entry.url = c.url;
  entry.nodeId = c.node_id ?? null;
  const opts = { transports: c.transports, reconnection: false, forceNew: true };
  if (c.token !== undefined && c.token !== null) opts.auth = { token: c.token };
  else if (c.auth) opts.auth = c.auth;
  wireRaw(entry, routedIo(agentsFor(c.connect_to))(nsUrl(c.url, c.namespace), opts));
}

function startClient(id, c) {
  if (c.useHelper === false) return startPlain(id, c);
  return startHelper(id, c);
}

function get(id) {
  const entry = clients.get(id);
  if (!entry) throw new Error(`no client ${id}`);
  return entry;
}

/** Emit with ack on whichever socket the client has. */
async function emitAck(entry, name, args, timeoutMs = 10000) {
  if (entry.kind === "helper") {
    if (name === "join") return entry.client.join(args[0]);
    if (name === "leave") return entry.client.leave(args[0]);
    return entry.client.emitWithAck(name, ...args);
  }
  if (!entry.socket?.connected) throw new Error(`client ${entry.id} is not connected`);
  return entry.socket.timeout(timeoutMs).emitWithAck(name, ...args);
}

function closeEntry(entry) {
  entry.state = "closed";
  if (entry.kind === "helper") entry.client.close();
  else entry.socket?.close();
}

function count() {
  const byNode = {};
  const states = {};
  let connected = 0;
  for (const e of clients.values()) {
    states[e.state] = (states[e.state] ?? 0) + 1;
    if (e.state === "connected") {
      connected += 1;
      const node = e.nodeId ?? "unknown";
      byNode[node] = (byNode[node] ?? 0) + 1;
    }
  }
  return { clients: clients.size, connected, by_node: byNode, states };
}

async function handle(c) {
  switch (c.cmd) {
    case "connect":
      await startClient(c.id, c);
      return {};
    case "connect_many": {
      const n = c.count ?? 0;
      for (let i = 0; i < n; i++) {
        // Plain clients assign one after another; helpers start their own loops.
        const p = startClient(`${c.prefix ?? "c"}${i}`, c);
        if (c.sequential) await p;
      }
      return { count: n };
    }
    case "connect_raw":
      startRaw(c.id, c);
      return {};
    case "join":
      return { ack: encode(await emitAck(get(c.id), "join", [c.room], c.timeout_ms)) };
    case "leave":
      return { ack: encode(await emitAck(get(c.id), "leave", [c.room], c.timeout_ms)) };
    case "publish": {
      const msg = { room: c.room, event: c.event, data: decode(c.data) };
      if (c.retain !== undefined) msg.retain = c.retain;
      return { ack: encode(await emitAck(get(c.id), "publish", [msg], c.timeout_ms)) };
    }
    case "emit": {
      const entry = get(c.id);
      const args = decode(c.args ?? []);
      if (c.ack) return { ack: encode(await emitAck(entry, c.event, args, c.timeout_ms)) };
      if (entry.kind === "helper") entry.client.emit(c.event, ...args);
      else entry.socket?.emit(c.event, ...args);
      return {};
    }
    case "count":
      return count();
    case "info": {
      const e = get(c.id);
      return {
        state: e.state,
        node_id: e.nodeId,
        url: e.url,
        rooms: e.kind === "helper" ? [...e.client.rooms] : [],
        position: e.kind === "helper" ? e.client.position : null,
        recovered: e.kind === "helper" ? e.client.recovered : null,
        connections: e.connections,
        last_error: e.lastError,
      };
    }
    case "close":
      if (c.id) closeEntry(get(c.id));
      else for (const e of clients.values()) closeEntry(e);
      return {};
    case "exit":
      for (const e of clients.values()) closeEntry(e);
      setTimeout(() => process.exit(0), 50);
      return {};
    default:
      throw new Error(`unknown cmd ${c.cmd}`);
  }
}

const rl = createInterface({ input: process.stdin, terminal: false });
rl.on("line", (line) => {
  if (!line.trim()) return;
  let c;
  try {
    c = JSON.parse(line);
  } catch (err) {
    out({ type: "result", req: null, ok: false, error: `bad json: ${err.message}` });
    return;
  }
  handle(c).then(
    (res) => {
      out({ type: "result", req: c.req ?? null, ok: true, ...res });
    },
    (err) => out({ type: "result", req: c.req ?? null, ok: false, error: String(err?.message ?? err) }),
  );
});
rl.on("close", () => {
  for (const e of clients.values()) closeEntry(e);
  setTimeout(() => process.exit(0), 50);
});
out({ type: "ready", driver: "node", pid: process.pid });
