// socket.io-client v4 against the server's /socket.io/, under node's test runner.
// Environment (tests/js/test_socketio_client.py): RT_HTTP_URL, RT_WS_URL (native /ws),
// RT_SERVICE_KEY, RT_SECRET (the HS256 secret user tokens are signed with).
import { createHmac } from "node:crypto";
import { test } from "node:test";
import assert from "node:assert/strict";
import { io } from "socket.io-client";
import WebSocket from "ws";

const HTTP = process.env.RT_HTTP_URL;
const NATIVE = process.env.RT_WS_URL;
const KEY = process.env.RT_SERVICE_KEY;
const TIMEOUT = 10000;
const MODES = {
  default: {}, // polling first, then the upgrade to websocket
  websocket: { transports: ["websocket"] },
};

let counter = 0;
const unique = (prefix) => `${prefix}${process.pid}x${Date.now().toString(36)}x${counter++}`;

async function token(user) {
  const part = (value) => Buffer.from(JSON.stringify(value)).toString("base64url");
  const now = Math.floor(Date.now() / 1000);
  const unsigned = `${part({ alg: "HS256", typ: "JWT" })}.${part({ sub: user, iat: now, exp: now + 3600 })}`;
  const signature = createHmac("sha256", process.env.RT_SECRET).update(unsigned).digest("base64url");
  return `${unsigned}.${signature}`;
}

async function rest(method, path, body) {
  const response = await fetch(HTTP + path, {
    method,
    headers: { Authorization: `Bearer ${KEY}`, "Content-Type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  return { status: response.status, body: text ? JSON.parse(text) : null };
}

function within(promise, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out: ${what}`)), TIMEOUT);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** Every event of a socket, in order; ``next`` takes the first one not yet taken that
 * matches, waiting for it when none has come. */
function recorder(socket) {
  const untaken = [];
  const waiters = [];
  socket.onAny((name, ...args) => {
    const waiter = waiters.find((w) => w.name === name && w.test(args[0]));
    if (waiter) {
      waiters.splice(waiters.indexOf(waiter), 1);
      waiter.resolve(args[0]);
    } else {
      untaken.push({ name, value: args[0] });
    }
  });
  return {
    next(name, test = () => true) {
      const index = untaken.findIndex((e) => e.name === name && test(e.value));
      if (index >= 0) return Promise.resolve(untaken.splice(index, 1)[0].value);
      return within(
        new Promise((resolve) => waiters.push({ name, test, resolve })),
        `event ${name}`,
      );
    },
  };
}

async function connect(user, options = {}) {
  const socket = io(HTTP, {
    auth: { token: await token(user) },
    reconnection: false,
    ...options,
  });
  const events = recorder(socket);
  await within(
    new Promise((resolve, reject) => {
      socket.once("connect", resolve);
      socket.once("connect_error", reject);
    }),
    "connect",
  );
  return { socket, events };
}

const call = (socket, op, args = {}) => socket.timeout(TIMEOUT).emitWithAck(op, args);

for (const [mode, options] of Object.entries(MODES)) {
  test(`${mode}: connect, join, send with ack, history, typing, presence, notifications`, async () => {
    const alice = unique("alice");
    const bob = unique("bob");
    const room = `wide:${unique("r")}`;
    const a = await connect(alice, options);
    const b = await connect(bob, options);
    try {
      if (mode === "default") {
        await within(
          new Promise((resolve) => {
            if (a.socket.io.engine.transport.name === "websocket") resolve();
            else a.socket.io.engine.once("upgrade", resolve);
          }),
          "upgrade to websocket",
        );
      }
      const joined = await call(a.socket, "join", { room });
      assert.equal(joined.room, room);
      assert.deepEqual(joined.presence, [alice]);
      await call(b.socket, "join", { room });
      await a.events.next("presence", (p) => p.user === bob && p.event === "join");
      const sent = await call(a.socket, "send", { room, body: { text: "hi" } });
      assert.equal(sent.seq, 1);
      for (const peer of [a, b]) {
        const message = await peer.events.next("message", (m) => m.room === room);
        assert.deepEqual(message, { room, seq: 1, user: alice, body: { text: "hi" }, ts: sent.ts });
      }
      // The app's own `message` event, without an ack.
      b.socket.emit("message", { room, body: "yo" });
      assert.equal((await a.events.next("message", (m) => m.seq === 2)).body, "yo");
      const history = await call(a.socket, "history", { room });
      assert.deepEqual(history.messages.map((m) => m.seq), [1, 2]);
      assert.deepEqual(await call(a.socket, "typing", { room, active: true }), {});
      assert.deepEqual(await b.events.next("typing", (t) => t.room === room), {
        room,
        user: alice,
        active: true,
      });
      assert.deepEqual((await call(a.socket, "presence", { room })).users.sort(), [alice, bob].sort());
      const { status } = await rest("POST", "/api/v1/notifications", {
        to: [alice],
        type: "comment",
        data: { on: 7 },
      });
      assert.equal(status, 202);
      const notification = await a.events.next("notification", (n) => n.type === "comment");
      assert.deepEqual(notification.data, { on: 7 });
      const listed = await call(a.socket, "notifications", { unread: true });
      assert.equal(listed.unread_count, 1);
      const refused = await call(a.socket, "join", { room: `swap:${unique("closed")}` });
      assert.equal(refused.error.code, "forbidden");
    } finally {
      a.socket.disconnect();
      b.socket.disconnect();
    }
  });

  test(`${mode}: a bad token is refused with connect_error and its code`, async () => {
    const socket = io(HTTP, { auth: { token: "not-a-token" }, reconnection: false, ...options });
    const error = await within(
      new Promise((resolve) => socket.once("connect_error", resolve)),
      "connect_error",
    );
    assert.deepEqual(error.data, { code: "unauthorized" });
    assert.ok(error.message);
    assert.equal(socket.connected, false);
    socket.disconnect();
  });

  test(`${mode}: other namespaces are refused`, async () => {
    const socket = io(`${HTTP}/admin`, {
      auth: { token: await token(unique("n")) },
      reconnection: false,
      ...options,
    });
    const error = await within(
      new Promise((resolve) => socket.once("connect_error", resolve)),
      "connect_error",
    );
    assert.equal(error.message, "Invalid namespace");
    socket.disconnect();
  });

  test(`${mode}: a socket.io client and a native client chat in one room, in one order`, async () => {
    const room = `wide:${unique("mix")}`;
    const s = await connect(unique("s"), options);
    await call(s.socket, "join", { room });
    const native = new WebSocket(NATIVE, ["rt1.json"]);
    const pushes = [];
    const replies = new Map();
    native.on("message", (data) => {
      for (const line of data.toString().split("\n")) {
        if (!line.trim()) continue;
        const message = JSON.parse(line);
        if (message.push === "message") pushes.push(message);
        else if (message.id) replies.get(message.id)?.(message);
      }
    });
    await within(new Promise((resolve) => native.once("open", resolve)), "native open");
    let ids = 0;
    const nativeCall = (op, args) =>
      within(
        new Promise((resolve) => {
          const id = ++ids;
          replies.set(id, resolve);
          native.send(JSON.stringify({ id, op, ...args }));
        }),
        `native ${op}`,
      );
    try {
      const connected = await nativeCall("connect", {
        token: await token(unique("n")),
        rooms: [{ room }],
      });
      assert.ok(connected.ok, JSON.stringify(connected));
      const count = 20;
      const sends = [];
      for (let n = 0; n < count; n++) {
        sends.push(
          n % 2 ? nativeCall("send", { room, body: { n } }) : call(s.socket, "send", { room, body: { n } }),
        );
      }
      await Promise.all(sends);
      const mine = [];
      while (mine.length < count) mine.push(await s.events.next("message", (m) => m.room === room));
      await within(
        (async () => {
          while (pushes.length < count) await new Promise((r) => setTimeout(r, 20));
        })(),
        "native pushes",
      );
      assert.deepEqual(mine.map((m) => m.seq), [...Array(count).keys()].map((n) => n + 1));
      assert.deepEqual(
        pushes.map(({ push, ...fields }) => fields),
        mine,
      );
    } finally {
      native.close();
      s.socket.disconnect();
    }
  });

  test(`${mode}: a reconnecting client recovers what it missed`, async () => {
    const user = unique("rec");
    const room = `wide:${unique("rec")}`;
    const socket = io(HTTP, {
      auth: { token: await token(user) },
      reconnectionDelay: 1500,
      randomizationFactor: 0,
      ...options,
    });
    const events = recorder(socket);
    const messages = [];
    socket.on("message", (m) => messages.push(m));
    try {
      await within(new Promise((resolve) => socket.once("connect", resolve)), "connect");
      assert.equal(socket.recovered, false);
      await call(socket, "join", { room });
      await call(socket, "send", { room, body: 1 });
      await events.next("offset", (o) => o.includes(`${room}=1`));
      const down = new Promise((resolve) => socket.once("disconnect", resolve));
      socket.io.engine.close(); // the connection drops: socket.io-client reconnects by itself
      await within(down, "disconnect");
      for (const body of [2, 3, 4]) {
        assert.equal((await rest("POST", `/api/v1/rooms/${room}/messages`, { body })).status, 201);
      }
      await within(new Promise((resolve) => socket.once("connect", resolve)), "reconnect");
      assert.equal(socket.recovered, true);
      const sent = await call(socket, "send", { room, body: 5 });
      assert.equal(sent.seq, 5);
      await within(
        (async () => {
          while (messages.length < 5) await new Promise((r) => setTimeout(r, 20));
        })(),
        "five messages",
      );
      assert.deepEqual(messages.map((m) => m.body), [1, 2, 3, 4, 5]);
    } finally {
      socket.disconnect();
    }
  });
}

test("an unrecoverable offset reconnects with recovered false", async () => {
  const user = unique("gone");
  const socket = io(HTTP, { auth: { token: await token(user) }, reconnection: false });
  await within(new Promise((resolve) => socket.once("connect", resolve)), "connect");
  socket.disconnect();
  // A forged offset for a room this user may not join: no recovery, a fresh session.
  socket._pid = "forged";
  socket._lastOffset = `swap:${unique("private")}=3`;
  socket.connect();
  await within(new Promise((resolve) => socket.once("connect", resolve)), "connect again");
  assert.equal(socket.recovered, false);
  socket.disconnect();
});
