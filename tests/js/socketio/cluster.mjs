// socket.io-client v4 against three instances behind nginx (round-robin, no sticky
// sessions), run by tests/cluster/test_socketio_nginx.py. Clients in default transports
// (polling, then the upgrade) and polling only chat in one room with a native client;
// then the instance holding most sessions is killed (SIGKILL) while messages flow, and
// every client must end with every message exactly once, in seq order.
//
// Environment: RT_HTTP_URL (nginx), RT_SECRET, RT_SERVICE_KEY, RT_INSTANCES (JSON:
// [{name, url, ws, pid}], each instance directly). Prints one JSON line of figures.
import { createHmac } from "node:crypto";
import assert from "node:assert/strict";
import { io } from "socket.io-client";
import WebSocket from "ws";

const HTTP = process.env.RT_HTTP_URL;
const KEY = process.env.RT_SERVICE_KEY;
const INSTANCES = JSON.parse(process.env.RT_INSTANCES);
const TIMEOUT = 30000;
const CLIENTS = 6; // per mode
const MORE_DEFAULT_CLIENTS = 30; // at most, until one upgrade moved its session
const AFTER_KILL = 60; // messages sent while and after the instance dies

let counter = 0;
const unique = (prefix) => `${prefix}${process.pid}x${Date.now().toString(36)}x${counter++}`;
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function token(user) {
  const part = (value) => Buffer.from(JSON.stringify(value)).toString("base64url");
  const now = Math.floor(Date.now() / 1000);
  const unsigned = `${part({ alg: "HS256", typ: "JWT" })}.${part({ sub: user, iat: now, exp: now + 3600 })}`;
  const signature = createHmac("sha256", process.env.RT_SECRET).update(unsigned).digest("base64url");
  return `${unsigned}.${signature}`;
}

/** A REST call through nginx, retried (same body: sends carry a client_id) while the
 * instance it reached went away. */
async function rest(method, path, body) {
  const deadline = Date.now() + TIMEOUT;
  for (;;) {
    try {
      const response = await fetch(HTTP + path, {
        method,
        headers: { Authorization: `Bearer ${KEY}`, "Content-Type": "application/json" },
        body: body === undefined ? undefined : JSON.stringify(body),
        signal: AbortSignal.timeout(10000),
      });
      if (![502, 503, 504].includes(response.status)) {
        const text = await response.text();
        return { status: response.status, body: text ? JSON.parse(text) : null };
      }
    } catch {
      // the connection went with the instance: try again
    }
    assert.ok(Date.now() < deadline, `${method} ${path} failed until the deadline`);
    await sleep(50);
  }
}

async function until(condition, what, timeout = TIMEOUT) {
  const deadline = Date.now() + timeout;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`timed out: ${what}`);
    await sleep(20);
  }
}

async function metrics(instance) {
  const text = await (await fetch(`${instance.url}/metrics`)).text();
  return (name, labels = {}) => {
    let total = 0;
    for (const line of text.split("\n")) {
      if (!line.startsWith(name)) continue;
      const match = line.match(/^([a-z_]+)(\{[^}]*\})? ([0-9.e+-]+)$/);
      if (!match || match[1] !== name) continue;
      const found = Object.fromEntries(
        [...(match[2] ?? "").matchAll(/(\w+)="([^"]*)"/g)].map((m) => [m[1], m[2]]),
      );
      if (Object.entries(labels).every(([k, v]) => found[k] === v)) total += Number(match[3]);
    }
    return total;
  };
}

async function total(instances, name, labels) {
  let sum = 0;
  for (const instance of instances) sum += (await metrics(instance))(name, labels);
  return sum;
}

/** A socket.io client in the room, reconnecting by itself (with recovery). */
async function member(room, mode) {
  const user = unique(mode === "polling" ? "p" : "d");
  assert.equal((await rest("PUT", `/api/v1/rooms/${room}/members/${user}`)).status, 204);
  const options = mode === "polling" ? { transports: ["polling"] } : {};
  const socket = io(HTTP, {
    auth: { token: token(user) },
    reconnectionDelay: 300,
    reconnectionDelayMax: 2000,
    ...options,
  });
  const client = { user, mode, socket, seqs: [], connects: 0, recovered: [] };
  client.upgraded = () => socket.io.engine?.transport?.name === "websocket";
  socket.on("message", (m) => m.room === room && client.seqs.push(m.seq));
  socket.on("connect", () => {
    client.connects += 1;
    if (client.connects > 1) client.recovered.push(socket.recovered);
  });
  socket.on("connect_error", (error) => {
    // Refused (not a lost transport): the test is over for this client.
    if (error.data) client.refused = error;
  });
  await until(() => socket.connected || client.refused, `${user} connects`);
  assert.equal(client.refused, undefined, `${user} was refused`);
  const joined = await socket.timeout(TIMEOUT).emitWithAck("join", { room });
  assert.equal(joined.room, room, JSON.stringify(joined));
  return client;
}

/** The native client: one instance directly (not the one to be killed), in the room. */
async function native(instance, room) {
  const user = unique("n");
  assert.equal((await rest("PUT", `/api/v1/rooms/${room}/members/${user}`)).status, 204);
  const ws = new WebSocket(instance.ws, ["rt1.json"]);
  const client = { seqs: [], replies: new Map(), ids: 0 };
  ws.on("message", (data) => {
    for (const line of data.toString().split("\n")) {
      if (!line.trim()) continue;
      const message = JSON.parse(line);
      if (message.push === "message" && message.room === room) client.seqs.push(message.seq);
      else if (message.id) client.replies.get(message.id)?.(message);
    }
  });
  await new Promise((resolve, reject) => {
    ws.once("open", resolve);
    ws.once("error", reject);
  });
  client.call = (op, args) =>
    new Promise((resolve) => {
      const id = ++client.ids;
      client.replies.set(id, resolve);
      ws.send(JSON.stringify({ id, op, ...args }));
    });
  const connected = await client.call("connect", { token: token(user), rooms: [{ room }] });
  assert.ok(connected.ok, JSON.stringify(connected));
  client.ws = ws;
  return client;
}

async function main() {
  const room = `swap:${unique("c")}`;
  const [nativeHome, ...others] = INSTANCES;
  const chat = await native(nativeHome, room);
  const clients = [];
  for (let i = 0; i < CLIENTS; i++) {
    clients.push(await member(room, "default"));
    clients.push(await member(room, "polling"));
  }
  const defaults = () => clients.filter((c) => c.mode === "default");
  await until(() => defaults().every((c) => c.upgraded()), "default clients upgrade");
  // Behind round robin an upgrade reaches another instance than its session's about
  // two times in three; connect more until one did (moved the session).
  let extra = 0;
  while ((await total(INSTANCES, "realtime_sio_relayed_total", { op: "take", result: "ok" })) === 0) {
    assert.ok(extra++ < MORE_DEFAULT_CLIENTS, "no upgrade ever moved a session");
    const client = await member(room, "default");
    clients.push(client);
    await until(() => client.upgraded(), "the extra client upgrades");
  }

  // Everyone chats: each socket.io client sends with an ack, the native client too.
  let sent = 0;
  for (const client of clients) {
    const ack = await client.socket.timeout(TIMEOUT).emitWithAck("send", { room, body: { from: client.user } });
    assert.ok(ack.seq, JSON.stringify(ack));
    sent += 1;
  }
  for (let i = 0; i < 3; i++) {
    const reply = await chat.call("send", { room, body: { native: i } });
    assert.ok(reply.ok, JSON.stringify(reply));
    sent += 1;
  }
  const everyone = () => [...clients, chat];
  await until(() => everyone().every((c) => c.seqs.length >= sent), "every client has the chat");
  const relayedGets = await total(INSTANCES, "realtime_sio_relayed_total", { op: "get", result: "ok" });
  const relayedPosts = await total(INSTANCES, "realtime_sio_relayed_total", { op: "post", result: "ok" });
  const moves = await total(INSTANCES, "realtime_sio_relayed_total", { op: "take", result: "ok" });
  assert.ok(relayedGets > 0 && relayedPosts > 0, "requests reached other instances and were relayed");

  // The instance holding the most sessions dies; messages keep coming through nginx.
  let victim = others[0];
  let most = -1;
  for (const instance of others) {
    const connections = (await metrics(instance))("realtime_connections");
    if (connections > most) [victim, most] = [instance, connections];
  }
  assert.ok(most >= 1, "sessions on the instances that may be killed");
  const sending = (async () => {
    for (let i = 0; i < AFTER_KILL; i++) {
      const { status } = await rest("POST", `/api/v1/rooms/${room}/messages`, {
        body: { after: i },
        client_id: `k${i}`,
      });
      assert.equal(status, 201);
      await sleep(10);
    }
  })();
  await sleep(200);
  process.kill(victim.pid, "SIGKILL");
  await sending;
  sent += AFTER_KILL;
  await until(() => clients.every((c) => c.socket.connected), "every client is connected again");
  for (const client of clients) {
    const ack = await client.socket.timeout(TIMEOUT).emitWithAck("send", { room, body: "again" });
    assert.ok(ack.seq, JSON.stringify(ack));
    sent += 1;
  }
  const expected = [...Array(sent).keys()].map((n) => n + 1);
  const report = () =>
    everyone()
      .map((c) => {
        const missing = expected.filter((n) => !c.seqs.includes(n));
        const twice = c.seqs.filter((n, i) => c.seqs.indexOf(n) !== i);
        return `${c.user ?? "native"} ${c.mode ?? ""} connects=${c.connects} recovered=${c.recovered} transport=${c.socket?.io.engine?.transport?.name} got=${c.seqs.length} missing=${missing} twice=${twice}`;
      })
      .join("\n");
  try {
    await until(() => everyone().every((c) => c.seqs.length >= sent), "every client has everything", 60000);
  } catch (error) {
    throw new Error(`${error.message} (victim ${victim.name}, ${sent} sent)\n${report()}`);
  }
  for (const client of everyone()) {
    assert.deepEqual(client.seqs, expected, `every seq once, in order:\n${report()}`);
  }
  const reconnected = clients.filter((c) => c.connects > 1);
  assert.ok(reconnected.length >= 1, "clients of the killed instance reconnected");
  for (const client of reconnected) assert.ok(client.recovered.every(Boolean), `${client.user} recovered`);
  console.log(
    JSON.stringify({
      victim: victim.name,
      clients: clients.length,
      reconnected: reconnected.length,
      messages: sent,
      relayed_gets: relayedGets,
      relayed_posts: relayedPosts,
      moves,
    }),
  );
  for (const client of clients) client.socket.disconnect();
  chat.ws.close();
}

main().then(
  () => process.exit(0),
  (error) => {
    console.error(error);
    process.exit(1);
  },
);
