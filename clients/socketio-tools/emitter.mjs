#!/usr/bin/env node
/**
 * JSON-lines driver over the official @socket.io/redis-emitter (unchanged), spawned by the
 * end-to-end tests (`switchyard_testkit::driver::Driver::emitter`). It speaks the same
 * protocol as clients/js/tools/driver.mjs: one command per line on stdin, a
 * `{"type":"result","req":..,"ok":..}` line per command on stdout, `{"type":"ready"}` first.
 *
 * argv[2] / REDIS_URL: the Redis the relay uses (redis://host:port).
 *
 *   {"cmd":"emit","nsp":"/","to":["r"],"except":["x"],"volatile":false,"event":"e","args":[..]}
 *   {"cmd":"socketsJoin","nsp":"/","to":[..],"except":[..],"rooms":["r"]}
 *   {"cmd":"socketsLeave","nsp":"/","to":[..],"except":[..],"rooms":["r"]}
 *   {"cmd":"disconnectSockets","nsp":"/","to":[..],"except":[..],"close":false}
 *   {"cmd":"serverSideEmit","nsp":"/","args":["e",1]}
 *   {"cmd":"publish","channel":"socket.io#/#","hex":"c1ff"}   raw PUBLISH (junk for the tests)
 *   {"cmd":"exit"}
 *
 * Every emitter call goes through the package's own API (of, to, except, volatile, ...). Binary
 * arguments are written {"$bin": "<base64>"} and sent as Buffers.
 */
import { createInterface } from "node:readline";
import { createClient } from "redis";
import { Emitter } from "@socket.io/redis-emitter";

const url = process.argv[2] ?? process.env.REDIS_URL ?? "redis://127.0.0.1:6379";
const client = createClient({ url });
client.on("error", (err) => process.stderr.write(`redis: ${err.message}\n`));
await client.connect();
const emitter = new Emitter(client);

function out(obj) {
  process.stdout.write(JSON.stringify(obj) + "\n");
}

function decode(v) {
  if (Array.isArray(v)) return v.map(decode);
  if (v && typeof v === "object") {
    if (typeof v.$bin === "string" && Object.keys(v).length === 1) return Buffer.from(v.$bin, "base64");
    return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, decode(x)]));
  }
  return v;
}

/** The emitter (or broadcast operator) a command targets, through the package's own API. */
function operator(c) {
  let op = c.nsp && c.nsp !== "/" ? emitter.of(c.nsp) : emitter;
  if (c.to && c.to.length) op = c.to.length === 1 ? op.to(c.to[0]) : op.in(c.to);
  if (c.except && c.except.length) op = op.except(c.except);
  if (c.volatile) op = op.volatile;
  return op;
}

async function handle(c) {
  switch (c.cmd) {
    case "emit":
      operator(c).emit(c.event, ...decode(c.args ?? []));
      return {};
    case "socketsJoin":
      operator(c).socketsJoin(c.rooms);
      return {};
    case "socketsLeave":
      operator(c).socketsLeave(c.rooms);
      return {};
    case "disconnectSockets":
      operator(c).disconnectSockets(Boolean(c.close));
      return {};
    case "serverSideEmit":
      (c.nsp && c.nsp !== "/" ? emitter.of(c.nsp) : emitter).serverSideEmit(...decode(c.args ?? []));
      return {};
    case "publish":
      return { receivers: await client.publish(c.channel, Buffer.from(c.hex ?? "", "hex")) };
    case "exit":
      setTimeout(() => process.exit(0), 50);
      return {};
    default:
      throw new Error(`unknown cmd ${c.cmd}`);
  }
}

// Commands run one after another, so the emitter publishes in the order they were given.
let chain = Promise.resolve();
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
  chain = chain.then(() =>
    handle(c).then(
      (res) => out({ type: "result", req: c.req ?? null, ok: true, ...res }),
      (err) => out({ type: "result", req: c.req ?? null, ok: false, error: String(err?.message ?? err) }),
    ),
  );
});
rl.on("close", () => setTimeout(() => process.exit(0), 50));
out({ type: "ready", driver: "emitter", pid: process.pid });
