// Node Socket.IO 4, deployed the way its users deploy it, for bench.compare.
//
//     node server.js --port 8092 --secret SECRET [--host 127.0.0.1]
//
// A plain `new Server(httpServer)` (Socket.IO's defaults: the in-memory adapter,
// both transports, its ping interval, no compression), speaking what the load
// generator's Socket.IO mode speaks (the same events as bench/peers/socketio_server.py
// and as realtime's /socket.io/):
//
// - CONNECT with `auth.token`: an HS256 JWT checked with the secret (jsonwebtoken);
//   its `sub` is the user, anything else is refused with CONNECT_ERROR;
// - `join` {room} → the socket enters the room; the ack is {room, seq} (the room's
//   last seq);
// - `send` {room, body} → the room's next seq; `message` {room, seq, user, body, ts}
//   is emitted to the room (sender included) with `io.to(room).emit`, and the ack
//   is {room, seq, ts};
// - `leave` {room} → the socket leaves it; the ack is {}.
//
// Nothing is stored. GET /healthz tells the benchmark the server is up.

import { createServer } from "node:http";
import { parseArgs } from "node:util";

import jwt from "jsonwebtoken";
import { Server } from "socket.io";

const { values: options } = parseArgs({
  options: {
    host: { type: "string", default: "127.0.0.1" },
    port: { type: "string", default: "8092" },
    secret: { type: "string" },
  },
});
if (!options.secret) {
  console.error("server.js: --secret is required");
  process.exit(2);
}

const httpServer = createServer((request, response) => {
  // Socket.IO answers /socket.io/ itself; everything else lands here.
  if (request.url === "/healthz") {
    response.writeHead(200, { "content-type": "application/json" });
    response.end(JSON.stringify({ status: "ok", instance: "socketio-node" }));
  } else {
    response.writeHead(404).end();
  }
});
const io = new Server(httpServer);
const seqs = new Map();

function badRequest(message) {
  return { error: { code: "bad_request", message } };
}

function reply(ack, value) {
  if (typeof ack === "function") ack(value);
}

io.use((socket, next) => {
  const token = socket.handshake.auth?.token;
  try {
    const claims = jwt.verify(String(token), options.secret, { algorithms: ["HS256"] });
    socket.data.user = String(claims.sub);
    next();
  } catch {
    next(new Error("unauthorized"));
  }
});

io.on("connection", (socket) => {
  socket.on("join", (data, ack) => {
    const room = data?.room;
    if (typeof room !== "string") return reply(ack, badRequest("join needs a room"));
    socket.join(room);
    reply(ack, { room, seq: seqs.get(room) ?? 0 });
  });
  socket.on("send", (data, ack) => {
    const room = data?.room;
    if (typeof room !== "string") return reply(ack, badRequest("send needs a room"));
    const seq = (seqs.get(room) ?? 0) + 1;
    seqs.set(room, seq);
    const ts = Date.now();
    io.to(room).emit("message", { room, seq, user: socket.data.user, body: data.body, ts });
    reply(ack, { room, seq, ts });
  });
  socket.on("leave", (data, ack) => {
    if (typeof data?.room === "string") socket.leave(data.room);
    reply(ack, {});
  });
});

httpServer.on("error", (error) => {
  // The port was taken between choosing and binding: the caller tries another.
  console.error(`server.js: ${error.code === "EADDRINUSE" ? "address in use" : error.message}`);
  process.exit(1);
});
// As realtime's and the Python peers': a connection storm must not overflow the accept queue.
httpServer.listen({ host: options.host, port: Number(options.port), backlog: 4096 });
