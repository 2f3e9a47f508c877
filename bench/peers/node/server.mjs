// The Node peer for Switchyard's benchmarks: socket.io 4.8 with @socket.io/redis-adapter 8.3,
// the cluster users would run instead of Switchyard. It implements the same built-in events as
// a Switchyard gateway so one load generator drives both:
//   join(room)                     -> ack {ok: true}
//   publish({room, event, data})   -> ack {ok: true}; every member of `room`, on every process
//                                     sharing the Redis, receives `event(data, {room})`.
// Websocket only (no polling), so clients need no sticky sessions.
//
// Environment: PORT (0 = any free port), REDIS_URL (unset = a single process, no adapter).
// Once serving it prints `SWITCHYARD_READY http=127.0.0.1:PORT pid=PID` on stdout.
import { createServer } from "node:http";
import { Server } from "socket.io";
import { createAdapter } from "@socket.io/redis-adapter";
import { createClient } from "redis";

const port = Number.parseInt(process.env.PORT ?? "0", 10);
const redisUrl = process.env.REDIS_URL;

const httpServer = createServer();
const options = { transports: ["websocket"], serveClient: false };

if (redisUrl) {
  const pubClient = createClient({ url: redisUrl });
  const subClient = pubClient.duplicate();
  pubClient.on("error", (err) => console.error("redis pub error", err));
  subClient.on("error", (err) => console.error("redis sub error", err));
  await Promise.all([pubClient.connect(), subClient.connect()]);
  options.adapter = createAdapter(pubClient, subClient);
}

const io = new Server(httpServer, options);

io.on("connection", (socket) => {
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
