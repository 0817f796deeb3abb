// What the tests against real servers share: settings from the environment,
// tokens, REST calls, the control endpoint of the pytest wrapper, waiting.
//
//   RT_WS_URL        ws://host:port/ws of the server (or of nginx in front)
//   RT_HTTP_URL      http://host:port for REST (default: from RT_WS_URL)
//   RT_SECRET        HS256 secret the server checks tokens with
//   RT_SERVICE_KEY   a REST service key
//   RT_CONTROL_URL   optional: POST {url}/{kill|start|restart}/{instance} kills or
//                    starts server processes (tests/js/test_js_client.py serves it)

import { createHmac, randomBytes } from 'node:crypto';

import { RealtimeClient } from '../realtime.js';

export const env = {
  wsUrl: process.env.RT_WS_URL,
  httpUrl: process.env.RT_HTTP_URL ?? process.env.RT_WS_URL?.replace(/^ws/, 'http').replace(/\/ws$/, ''),
  secret: process.env.RT_SECRET,
  serviceKey: process.env.RT_SERVICE_KEY,
  controlUrl: process.env.RT_CONTROL_URL,
};

/** Why the server tests cannot run here, or null. */
export const skipReason =
  env.wsUrl && env.secret && env.serviceKey
    ? null
    : 'needs RT_WS_URL, RT_SECRET and RT_SERVICE_KEY (tests/js/test_js_client.py sets them)';

/**
 * The WebSocket the tests use: the global one (Node >= 22, or --experimental-websocket,
 * as in browsers) unless RT_WEBSOCKET=ws asks for the `ws` package's.
 */
export const WebSocketImpl =
  process.env.RT_WEBSOCKET !== 'ws' && globalThis.WebSocket ? globalThis.WebSocket : (await import('ws')).default;

function base64url(data) {
  return Buffer.from(data).toString('base64url');
}

/** A user token (HS256), as the app's backend would mint it. */
export function token(user, { ttl = 3600, ...claims } = {}) {
  const now = Math.floor(Date.now() / 1000);
  const header = base64url(JSON.stringify({ alg: 'HS256', typ: 'JWT' }));
  const payload = base64url(JSON.stringify({ sub: user, iat: now, exp: now + ttl, ...claims }));
  const signature = createHmac('sha256', env.secret).update(`${header}.${payload}`).digest('base64url');
  return `${header}.${payload}.${signature}`;
}

export function unique(prefix) {
  return prefix + randomBytes(4).toString('hex');
}

/** One REST call with the service key; returns {status, body}. */
export async function rest(method, path, body) {
  const response = await fetch(env.httpUrl + path, {
    method,
    headers: {
      Authorization: `Bearer ${env.serviceKey}`,
      ...(body === undefined ? {} : { 'Content-Type': 'application/json' }),
    },
    body: body === undefined ? undefined : JSON.stringify(body),
    signal: AbortSignal.timeout(30000),
  });
  const text = await response.text();
  return { status: response.status, body: text ? JSON.parse(text) : null };
}

/** A REST call that is retried while the instance behind the address is down. */
export async function restRetried(method, path, body, timeout = 60000) {
  const deadline = Date.now() + timeout;
  for (;;) {
    try {
      const result = await rest(method, path, body);
      if (result.status < 500) return result;
    } catch {
      // connection refused while the server restarts
    }
    if (Date.now() > deadline) throw new Error(`${method} ${path} kept failing`);
    await sleep(100);
  }
}

/** Asks the pytest wrapper to kill (-9), start or restart server process `instance`. */
export async function control(action, instance = 0) {
  if (!env.controlUrl) throw new Error('RT_CONTROL_URL is not set');
  const response = await fetch(`${env.controlUrl}/${action}/${instance}`, {
    method: 'POST',
    signal: AbortSignal.timeout(120000),
  });
  if (response.status !== 200) throw new Error(`control ${action} ${instance}: ${await response.text()}`);
}

export function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Waits until `condition()` is true; fails after `timeout` ms (a generous outer bound). */
export async function until(condition, timeout = 30000, what = 'condition') {
  const deadline = Date.now() + timeout;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(20);
  }
}

/** A client for `user` with test-friendly backoff; closed by `closeAll()`. */
const open = new Set();
export function client(user, options = {}) {
  const made = new RealtimeClient(env.wsUrl, {
    token: options.getToken ? undefined : token(user),
    WebSocket: WebSocketImpl,
    minReconnectDelay: 100,
    maxReconnectDelay: 2000,
    ...options,
  });
  open.add(made);
  return made;
}

export function closeAll() {
  for (const made of open) made.close();
  open.clear();
}

/** Records a room's messages and checks the order as they come. */
export function recorder(room) {
  const seen = { seqs: [], bodies: [], recoveries: [], states: [] };
  room.on('message', (message) => {
    seen.seqs.push(message.seq);
    seen.bodies.push(message.body);
  });
  room.on('recovery', (report) => seen.recoveries.push(report));
  room.client.on('state', ({ state }) => seen.states.push(state));
  return seen;
}

export function range(first, last) {
  return Array.from({ length: last - first + 1 }, (_, i) => first + i);
}

/**
 * A WebSocket constructor with a gate: while `gate.closed`, opening fails (as if
 * the network were down), so a test can keep one client away while others go on.
 */
export function gated() {
  const gate = { closed: false, opened: 0 };
  class GatedWebSocket extends WebSocketImpl {
    constructor(url, protocols) {
      if (gate.closed) throw new Error('the test keeps this client offline');
      super(url, protocols);
      gate.opened += 1;
    }
  }
  gate.WebSocket = GatedWebSocket;
  return gate;
}

/**
 * Sends `count` messages ({i}) to `room`, `window` at a time; calls `progress(acked)`
 * after each acknowledgement. Returns the acknowledgements, by i.
 */
export async function stream(room, count, { window = 10, progress = () => {} } = {}) {
  const acks = new Array(count);
  let next = 0;
  let acked = 0;
  async function worker() {
    while (next < count) {
      const i = next++;
      acks[i] = await room.send({ i }, { clientId: `m${i}` });
      acked += 1;
      await progress(acked);
    }
  }
  await Promise.all(Array.from({ length: window }, worker));
  return acks;
}

/** Every message of a room, read over REST page by page. */
export async function allMessages(name) {
  const messages = [];
  for (;;) {
    const after = messages.length ? messages.at(-1).seq : 0;
    const { body } = await restRetried('GET', `/api/v1/rooms/${name}/messages?after=${after}&limit=200`);
    messages.push(...body.messages);
    if (!body.more) return messages;
  }
}
