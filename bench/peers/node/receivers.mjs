// Receivers for the delivery benchmarks' `--client official`: the official socket.io-client
// 4.8 (from this directory's lockfile) in place of the Rust load generator, so the servers are
// measured against the client their users run. One process holds many clients; the benchmark
// (crates/bench/src/official.rs) runs several and drives each over stdin/stdout, one JSON
// object per line.
//
// Once loaded it prints {"ready": true}. Requests (stdin), each answered by one line on stdout
// unless said otherwise:
//   {"sync": ns}        the generator's clock now; arrivals are recorded on that clock
//                       (process.hrtime, CLOCK_MONOTONIC, plus the offset; the latest sync
//                       wins, so the generator repeats it until one round trip is short)
//                       -> {"synced": true}
//   {"connect": [{"url", "token", "rooms": [..], "source"}, ..], "concurrency": n}
//                       connects each client (websocket only, no reconnection, from the
//                       loopback address `source`, `auth.token` when given) and joins its
//                       rooms with the built-in `join` -> {"connected": n, "errors": [..]}
//   {"take": true}      -> {"arrivals": [seq, sent_ns, arrived_ns, seq, ...]} since the last take
// Unasked, every 100 ms while something changed: {"delivered": n, "dropped": k} (increments):
// stamped events received, and clients whose connection ended after they were connected.
import readline from "node:readline";
import { io } from "socket.io-client";

const BENCH_EVENT = "m";
let offset = 0n;
let arrivals = [];
let delivered = 0;
let dropped = 0;
const sockets = [];

const out = (value) => process.stdout.write(`${JSON.stringify(value)}\n`);
const now = () => Number(process.hrtime.bigint() + offset);

function connectOne(spec) {
  return new Promise((resolve, reject) => {
    const socket = io(spec.url, {
      transports: ["websocket"],
      reconnection: false,
      forceNew: true,
      localAddress: spec.source,
      auth: spec.token ? { token: spec.token } : {},
      timeout: 30000,
    });
    let connected = false;
    socket.on(BENCH_EVENT, (stamp) => {
      arrivals.push(stamp.s, stamp.t, now());
      delivered += 1;
    });
    socket.on("disconnect", () => {
      if (connected) dropped += 1;
    });
    socket.once("connect_error", (err) => {
      socket.close();
      reject(new Error(`connect to ${spec.url}: ${err.message}`));
    });
    socket.once("connect", async () => {
      connected = true;
      try {
        for (const room of spec.rooms) {
          const ack = await socket.timeout(30000).emitWithAck("join", room);
          if (!ack || ack.ok !== true) throw new Error(`join ${room}: ${JSON.stringify(ack)}`);
        }
        sockets.push(socket);
        resolve();
      } catch (err) {
        connected = false;
        socket.close();
        reject(err);
      }
    });
  });
}

async function connectAll(specs, concurrency) {
  let next = 0;
  let connected = 0;
  const errors = [];
  const worker = async () => {
    while (next < specs.length) {
      const spec = specs[next++];
      try {
        await connectOne(spec);
        connected += 1;
      } catch (err) {
        errors.push(String(err.message ?? err));
      }
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, concurrency) }, worker));
  return { connected, errors: errors.slice(0, 10) };
}

setInterval(() => {
  if (delivered > 0 || dropped > 0) {
    out({ delivered, dropped });
    delivered = 0;
    dropped = 0;
  }
}, 100);

out({ ready: true });
const lines = readline.createInterface({ input: process.stdin });
lines.on("line", async (line) => {
  const msg = JSON.parse(line);
  if (msg.sync !== undefined) {
    offset = BigInt(msg.sync) - process.hrtime.bigint();
    out({ synced: true });
  } else if (msg.connect) {
    out(await connectAll(msg.connect, msg.concurrency ?? 50));
  } else if (msg.take) {
    const taken = arrivals;
    arrivals = [];
    out({ arrivals: taken });
  }
});
lines.on("close", () => {
  for (const socket of sockets) socket.close();
  process.exit(0);
});
