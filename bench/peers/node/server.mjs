// The Node peer for Switchyard's benchmarks: socket.io 4.8 with @socket.io/redis-adapter 8.3,
// the cluster users would run instead of Switchyard. It implements the same built-in events as
// a Switchyard gateway so one load generator drives both:
//   join(room)                     -> ack {ok: true}
//   publish({room, event, data})   -> ack {ok: true}; every member of `room`, on every process
//                                     sharing the Redis, receives `event(data, {room})`.
// Websocket only (no polling), so clients need no sticky sessions.
//
// Environment: PORT (0 = any free port), REDIS_URL (unset = a single process, no adapter),
// ADAPTER: `redis` (default, @socket.io/redis-adapter 8.3 over pub/sub), `redis-sharded` (the
// same package's createShardedAdapter with subscriptionMode "dynamic": SSUBSCRIBE/SPUBLISH on
// Redis 7, one channel per room, so a server receives only the rooms it has members in) or
// `redis-streams`
// (@socket.io/redis-streams-adapter 0.2 with connection state recovery on: the official
// client's `socket.recovered`, the peer of Switchyard's resume in the `resume` benchmark).
// Once serving it prints `SWITCHYARD_READY http=127.0.0.1:PORT pid=PID` on stdout.
import { createServer } from "node:http";
import { Server } from "socket.io";
import { createAdapter, createShardedAdapter } from "@socket.io/redis-adapter";
import { createAdapter as createStreamsAdapter } from "@socket.io/redis-streams-adapter";
import { createClient } from "redis";

const port = Number.parseInt(process.env.PORT ?? "0", 10);
const redisUrl = process.env.REDIS_URL;
const adapter = process.env.ADAPTER ?? "redis";
if (!["redis", "redis-sharded", "redis-streams"].includes(adapter)) {
  console.error(`ADAPTER must be redis, redis-sharded or redis-streams, got ${adapter}`);
  process.exit(2);
}

const httpServer = createServer();
const options = { transports: ["websocket"], serveClient: false };

if (redisUrl && adapter === "redis-streams") {
  const client = createClient({ url: redisUrl });
  client.on("error", (err) => console.error("redis error", err));
  await client.connect();
  options.adapter = createStreamsAdapter(client);
  // The documented defaults: a session lives 2 minutes after a disconnection.
  options.connectionStateRecovery = { maxDisconnectionDuration: 2 * 60 * 1000, skipMiddlewares: true };
} else if (redisUrl && adapter === "redis-sharded") {
  const pubClient = createClient({ url: redisUrl });
  const subClient = pubClient.duplicate();
  pubClient.on("error", (err) => console.error("redis pub error", err));
  subClient.on("error", (err) => console.error("redis sub error", err));
  await Promise.all([pubClient.connect(), subClient.connect()]);
  options.adapter = createShardedAdapter(pubClient, subClient, { subscriptionMode: "dynamic" });
} else if (redisUrl) {
  const pubClient = createClient({ url: redisUrl });
  const subClient = pubClient.duplicate();
  pubClient.on("error", (err) => console.error("redis pub error", err));
  subClient.on("error", (err) => console.error("redis sub error", err));
  await Promise.all([pubClient.connect(), subClient.connect()]);
  options.adapter = createAdapter(pubClient, subClient);
}

const io = new Server(httpServer, options);

io.on("connection", (socket) => {
  // A recovered socket (redis-streams) is back in its rooms and has been sent what it missed.
  socket.on("join", (room, ack) => {
    if (typeof room !== "string" || room.length === 0) {
      if (typeof ack === "function") ack({ ok: false, error: "bad_room" });
      return;
    }
    socket.join(room);
    if (typeof ack === "function") ack({ ok: true });
  });
  socket.on("publish", (msg, ack) => {
    if (!msg || typeof msg.room !== "string" || typeof msg.event !== "string") {
      if (typeof ack === "function") ack({ ok: false, error: "bad_publish" });
      return;
    }
    io.to(msg.room).emit(msg.event, msg.data, { room: msg.room });
    if (typeof ack === "function") ack({ ok: true });
  });
});

httpServer.listen(port, "127.0.0.1", () => {
  const addr = httpServer.address();
  console.log(`SWITCHYARD_READY http=127.0.0.1:${addr.port} pid=${process.pid}`);
});

const stop = () => {
  io.close();
  process.exit(0);
};
process.on("SIGTERM", stop);
process.on("SIGINT", stop);
