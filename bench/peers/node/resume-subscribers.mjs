#!/usr/bin/env node
// Subscribers for the `resume` benchmark (crates/bench/src/resume.rs): many clients in one room,
// each recording the sequence number `s` of every `m` event it receives, in arrival order, and
// how each of its reconnects went. One process, two kinds of client:
//
//   --system socketio  --urls http://a,http://b,...  the official socket.io-client 4.8 against
//       the Node peer with connection state recovery (server.mjs, ADAPTER=redis-streams).
//       Subscriber i connects to urls[i % n]. Reconnection is the client's own (its default
//       delays); since a dead server's URL stays dead, every reconnect attempt moves on to the
//       next URL (what a load balancer in front of the cluster does). A reconnect counts as
//       recovered when `socket.recovered` is true; otherwise the subscriber joins the room again.
//   --system switchyard --placement http://...        clients/js/src/switchyard.mjs: assign,
//       connect, and after a loss re-assign and `resume` by itself; `resumed.recovered`.
//
// Common: --count N (subscribers), --room R.
//
// stdout, JSON lines:
//   {"type":"ready","servers":{"<url or node id>":n}}    every subscriber connected and joined
//   {"type":"status","complete":k,"received":r}         answer to `status`: k subscribers have
//                                                        seen sequence number --last; r events
//   {"type":"report","subscribers":[{"server","seqs":[..],"recovered":k,"lost":k}]}
//                                                        answer to `report`; then the process exits
// stdin: `status` | `report`, one per line.
import { createInterface } from "node:readline";
import { parseArgs } from "node:util";
import { io } from "socket.io-client";

const { values: args } = parseArgs({
  options: {
    system: { type: "string" },
    urls: { type: "string", default: "" },
    placement: { type: "string", default: "" },
    count: { type: "string", default: "200" },
    room: { type: "string", default: "resume" },
    last: { type: "string", default: "4999" },
  },
});
const count = Number.parseInt(args.count, 10);
const last = Number.parseInt(args.last, 10);
const room = args.room;

function out(obj) {
  process.stdout.write(JSON.stringify(obj) + "\n");
}

function fail(message) {
  console.error(message);
  process.exit(2);
}

/** One subscriber's record. */
function record(server) {
  return { server, seqs: [], recovered: 0, lost: 0 };
}

/** The sequence number of a benchmark event's data (`{s, t}`), or null. */
function seqOf(data) {
  return data && typeof data === "object" && Number.isInteger(data.s) ? data.s : null;
}

/** socket.io-client against the Node peer; resolves with the record once joined. */
function socketioSubscriber(i, urls) {
  return new Promise((resolve, reject) => {
    let next = i % urls.length;
    const rec = record(urls[next]);
    const socket = io(urls[next], { transports: ["websocket"] });
    // A reconnect goes to the next server: the dead one's URL never answers again.
    socket.io.on("reconnect_attempt", () => {
      next = (next + 1) % urls.length;
      socket.io.uri = urls[next];
    });
    let joined = false;
    socket.on("connect", async () => {
      if (joined) {
        if (socket.recovered) {
          rec.recovered += 1;
          return;
        }
        rec.lost += 1;
      }
      try {
        const ack = await socket.timeout(30000).emitWithAck("join", room);
        if (!ack?.ok) throw new Error(`join refused: ${JSON.stringify(ack)}`);
        if (!joined) {
          joined = true;
          resolve(rec);
        }
      } catch (e) {
        if (!joined) reject(e);
      }
    });
    socket.on("m", (data) => {
      const s = seqOf(data);
      if (s !== null) rec.seqs.push(s);
    });
  });
}

/** clients/js/src/switchyard.mjs through placement; resolves with the record once joined. */
async function switchyardSubscriber(connect, placementUrl) {
  const client = connect({ placementUrl, transports: ["websocket"] });
  const ack = await client.join(room);
  if (!ack?.ok) throw new Error(`join refused: ${JSON.stringify(ack)}`);
  const rec = record(client.nodeId);
  client.on("m", (data) => {
    const s = seqOf(data);
    if (s !== null) rec.seqs.push(s);
  });
  client.on("resumed", (r) => {
    if (r.recovered) rec.recovered += 1;
    else rec.lost += 1;
  });
  return rec;
}

let records;
if (args.system === "socketio") {
  const urls = args.urls.split(",").filter((u) => u.length > 0);
  if (urls.length === 0) fail("--urls is required with --system socketio");
  records = await Promise.all(Array.from({ length: count }, (_, i) => socketioSubscriber(i, urls)));
} else if (args.system === "switchyard") {
  if (!args.placement) fail("--placement is required with --system switchyard");
  const { connect } = await import("../../../clients/js/src/switchyard.mjs");
  const pending = [];
  // Connect in small waves so placement's connect-rate protection is not what is measured.
  for (let i = 0; i < count; i += 1) {
    pending.push(switchyardSubscriber(connect, args.placement));
    if (i % 20 === 19) await new Promise((r) => setTimeout(r, 50));
  }
  records = await Promise.all(pending);
} else {
  fail("--system must be socketio or switchyard");
}

const servers = {};
for (const r of records) servers[r.server] = (servers[r.server] ?? 0) + 1;
out({ type: "ready", servers });

for await (const line of createInterface({ input: process.stdin })) {
  const cmd = line.trim();
  if (cmd === "status") {
    let complete = 0;
    let received = 0;
    for (const r of records) {
      received += r.seqs.length;
      if (r.seqs.lastIndexOf(last) >= 0) complete += 1;
    }
    out({ type: "status", complete, received });
  } else if (cmd === "report") {
    // A large write to a pipe completes asynchronously: exit once it is flushed.
    process.stdout.write(JSON.stringify({ type: "report", subscribers: records }) + "\n", () =>
      process.exit(0),
    );
  }
}
process.exit(0);
