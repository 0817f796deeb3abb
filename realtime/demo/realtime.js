// Client for the realtime server (protocol rt1, JSON encoding).
//
// One ES module, no dependencies: browsers and Node (>= 22 has a global WebSocket;
// on Node 20 pass one, e.g. `{ WebSocket }` from the `ws` package).
//
// What it guarantees an app, per room: messages in seq order, each seq once, with
// no hole, across reconnects. After a reconnect every room is joined again with
// `since`/`epoch`; when the server cannot hand over everything missed (`recovered:
// false`), the gap is read from history page by page before live messages are let
// through, and the room says so with a `recovery` event. A `send` carries a
// `client_id` and is sent again after a reconnect until the server acknowledges it,
// so it is stored once however often it travels.

export const VERSION = '0.1.0';
export const SUBPROTOCOL = 'rt1.json';

/** Connection states. `online` and `recovered` both mean usable. */
export const State = Object.freeze({
  CONNECTING: 'connecting', // first connection under way (and its retries)
  ONLINE: 'online', // connected for the first time, rooms joined
  RECONNECTING: 'reconnecting', // lost: waiting to retry, or rejoining and catching up
  RECOVERED: 'recovered', // connected again, every room rejoined, every gap filled
  CLOSED: 'closed', // not started, close() called, or refused for good
});

/** Room states. */
export const RoomState = Object.freeze({
  LEFT: 'left', // not joined (never, left, or taken out by the server)
  JOINING: 'joining', // joining, or rejoining and catching up
  JOINED: 'joined', // joined: live messages flow
});

/** Close codes the server uses (PROTOCOL.md section 4 and the repo's additions). */
export const CloseCode = Object.freeze({
  NORMAL: 1000,
  GOING_AWAY: 1001,
  ABNORMAL: 1006,
  RESTARTING: 1012,
  BAD_FRAME: 4000,
  UNAUTHORIZED: 4001,
  FORBIDDEN: 4003,
  DISCONNECTED: 4004,
  LIMIT: 4008,
  TOO_SLOW: 4009,
  TOKEN_EXPIRED: 4010,
  TOO_MANY_CONNECTIONS: 4029,
});

const HISTORY_PAGE = 200; // the server's largest history page
const CONNECT_ROOMS = 100; // the most rooms one `connect` may join
const RETRY_CODES = new Set(['unavailable', 'rate_limited']); // nothing was done: retry
const FATAL_JOIN_CODES = new Set(['forbidden', 'not_found', 'bad_request', 'unauthorized']);
const OPEN = 1;
const STABLE_MS = 5000; // a connection up this long resets the backoff

const DEFAULTS = {
  minReconnectDelay: 500,
  maxReconnectDelay: 30000,
  timeout: 10000,
  maxInFlight: 50,
  typingInterval: 3000,
  syncNotifications: true,
};

/** An error from the server (`code` is its error code) or from the client. */
export class RealtimeError extends Error {
  /**
   * @param {string} code server codes (`forbidden`, `unavailable`, …) or the
   *   client's own: `timeout`, `disconnected`, `closed`, `unauthorized`.
   * @param {string} message
   */
  constructor(code, message) {
    super(message);
    this.name = 'RealtimeError';
    this.code = code;
  }
}

// Pure helpers ---------------------------------------------------------------------

const ADVICE = /;\s*retry_ms=(\d{1,9})-(\d{1,9})\s*$/;

/**
 * The reconnect advice at the end of a close reason (`…; retry_ms=LOW-HIGH`), or null.
 * @param {string | undefined} reason
 * @returns {{ low: number, high: number } | null}
 */
export function parseAdvice(reason) {
  const match = ADVICE.exec(reason ?? '');
  if (!match) return null;
  const low = Number(match[1]);
  const high = Number(match[2]);
  return high < low ? null : { low, high };
}

/** A close reason without its advice: what to show. */
export function reasonText(reason) {
  return (reason ?? '').replace(ADVICE, '').trimEnd();
}

/**
 * Full-jitter exponential backoff: uniform in [0, min(max, min * 2^attempt)).
 * @param {number} attempt 0 for the first retry
 */
export function backoffDelay(attempt, min, max, random = Math.random) {
  const cap = Math.min(max, min * 2 ** Math.min(attempt, 32));
  return random() * cap;
}

function randomId() {
  const bytes = new Uint8Array(9);
  globalThis.crypto.getRandomValues(bytes);
  let text = '';
  for (const byte of bytes) text += byte.toString(36).padStart(2, '0');
  return text;
}

function reportListenerError(error) {
  // A listener's exception is the app's bug: report it, never break the client.
  if (typeof globalThis.reportError === 'function') globalThis.reportError(error);
  else queueMicrotask(() => { throw error; });
}

/** Rejections nobody awaits must not crash Node: the caller still sees them. */
function handled(promise) {
  promise.catch(() => {});
  return promise;
}

class Emitter {
  #listeners = new Map();

  /** Adds a listener; returns a function that removes it. */
  on(event, listener) {
    let set = this.#listeners.get(event);
    if (!set) this.#listeners.set(event, (set = new Set()));
    set.add(listener);
    return () => this.off(event, listener);
  }

  once(event, listener) {
    const off = this.on(event, (value) => {
      off();
      listener(value);
    });
    return off;
  }

  off(event, listener) {
    this.#listeners.get(event)?.delete(listener);
  }

  _emit(event, value) {
    const set = this.#listeners.get(event);
    if (!set) return;
    for (const listener of [...set]) {
      try {
        listener(value);
      } catch (error) {
        reportListenerError(error);
      }
    }
  }
}

// The client -------------------------------------------------------------------------

export class RealtimeClient extends Emitter {
  /**
   * @param {string} url the server's WebSocket URL, e.g. `ws://localhost:8080/ws`
   * @param {object} options see realtime.d.ts (`ClientOptions`)
   */
  constructor(url, options = {}) {
    super();
    if (!options.token && typeof options.getToken !== 'function') {
      throw new TypeError('RealtimeClient needs a token or a getToken() function');
    }
    const WebSocketImpl = options.WebSocket ?? globalThis.WebSocket;
    if (typeof WebSocketImpl !== 'function') {
      throw new TypeError(
        'no WebSocket here (Node < 22): pass one, e.g. new RealtimeClient(url, ' +
          "{ WebSocket: (await import('ws')).default, ... })",
      );
    }
    this.url = url;
    this._options = { ...DEFAULTS, ...options };
    this._WebSocket = WebSocketImpl;
    /** @type {string} */
    this.state = State.CLOSED;
    this.user = null;
    this.session = null;
    this.expiresAt = null;
    this.notifications = new Notifications(this);

    this._ws = null;
    this._gen = 0; // one per connection attempt: late events of older ones are ignored
    this._ready = false; // the current connection answered `connect`
    this._wasOnline = false;
    this._stopped = true;
    this._closed = false; // before the first connect(), calls wait for it
    this._attempt = 0;
    this._readyAt = 0;
    this._nextId = 1;
    this._callSeq = 0;
    this._queue = []; // app calls waiting to be sent, in the order they were made
    this._inFlight = new Map(); // id -> call
    this._lanes = new Set(); // lanes with a call in flight
    this._paused = false;
    this._rooms = new Map();
    this._token = options.token ?? null;
    this._tokenStale = !options.token;
    this._clientIdPrefix = randomId();
    this._clientIdCount = 0;
    this._timers = { reconnect: null, open: null, ping: null, refresh: null, pause: null };
    this._connectWaiters = [];
  }

  // Public API -------------------------------------------------------------------

  /**
   * Starts connecting (and keeps reconnecting until `close()`). Resolves once
   * online; rejects if the client is closed first.
   * @returns {Promise<void>}
   */
  connect() {
    const waiting = this.ready();
    if (this._stopped) {
      this._stopped = false;
      this._closed = false;
      this._attempt = 0;
      this._setState(this._wasOnline ? State.RECONNECTING : State.CONNECTING);
      this._open();
    }
    return waiting;
  }

  /** Resolves when the client is online (or recovered); rejects when it closes first. */
  ready() {
    if (this.isOnline) return Promise.resolve();
    return handled(new Promise((resolve, reject) => this._connectWaiters.push({ resolve, reject })));
  }

  /** Whether commands go out now (`online` or `recovered`). */
  get isOnline() {
    return this.state === State.ONLINE || this.state === State.RECOVERED;
  }

  /** Closes the connection and stops reconnecting; calls still pending are rejected. */
  close() {
    this._shutdown(CloseCode.NORMAL, 'closed by the client', null);
  }

  /**
   * The room object for `name` (created on first use; join it with `join()`).
   * `since`/`epoch` resume from a position the app kept (e.g. in localStorage);
   * `token` is a room token for rooms joined without membership.
   */
  room(name, options = {}) {
    let room = this._rooms.get(name);
    if (!room) {
      room = new Room(this, name, options);
      this._rooms.set(name, room);
    } else if (options.token) {
      room._token = options.token;
    }
    return room;
  }

  /** Every room this client knows of. */
  rooms() {
    return [...this._rooms.values()];
  }

  /** A round trip to the server. */
  ping() {
    return this._call('ping', {}).then(() => undefined);
  }

  /** A new idempotency key for `send` (unique per client; at most 64 characters). */
  newClientId() {
    this._clientIdCount += 1;
    return `${this._clientIdPrefix}-${this._clientIdCount.toString(36)}`;
  }

  // Connection lifecycle ------------------------------------------------------------

  async _open() {
    const gen = ++this._gen;
    let token;
    try {
      token = await this._currentToken();
    } catch (error) {
      if (gen !== this._gen) return;
      this._emit('error', error);
      this._retry(0, `getToken failed: ${error?.message ?? error}`);
      return;
    }
    if (gen !== this._gen) return;
    if (!token) {
      this._shutdown(CloseCode.UNAUTHORIZED, 'getToken gave no token', new RealtimeError('unauthorized', 'no token'));
      return;
    }
    let ws;
    try {
      ws = new this._WebSocket(this.url, [SUBPROTOCOL]);
    } catch (error) {
      this._emit('error', error);
      this._retry(0, `cannot open: ${error?.message ?? error}`);
      return;
    }
    this._ws = ws;
    ws.binaryType = 'arraybuffer';
    ws.onopen = () => {
      if (gen === this._gen) this._sendConnect(gen, token);
    };
    ws.onmessage = (event) => {
      if (gen === this._gen) this._onFrame(event.data);
    };
    ws.onclose = (event) => {
      if (gen === this._gen) this._lost(event.code, event.reason);
    };
    ws.onerror = () => {}; // a close event follows with what we can know
    this._timers.open = setTimeout(() => {
      if (gen === this._gen) this._drop(CloseCode.ABNORMAL, 'connect timed out');
    }, this._options.timeout);
  }

  async _currentToken() {
    const { getToken } = this._options;
    if (typeof getToken !== 'function') return this._token;
    const fresh =
      this._token &&
      !this._tokenStale &&
      (this.expiresAt === null || this.expiresAt * 1000 - Date.now() > 5000);
    if (!fresh) {
      this._token = await getToken();
      this._tokenStale = false;
    }
    return this._token;
  }

  _sendConnect(gen, token) {
    const wanted = [...this._rooms.values()].filter((room) => room._wanted);
    for (const room of wanted) room._beginJoin();
    const request = this._request('connect', {
      token,
      rooms: wanted.slice(0, CONNECT_ROOMS).map((room) => room._joinArgs()),
    });
    request.then(
      (reply) => {
        if (gen === this._gen) this._connected(gen, reply);
      },
      (error) => {
        if (gen !== this._gen || error.code === 'disconnected') return;
        if (error.code === 'unauthorized') this._tokenStale = true;
        this._emit('error', error);
        // The server closes after a failed connect; do not wait for it.
        this._drop(error.code === 'unauthorized' ? CloseCode.UNAUTHORIZED : CloseCode.ABNORMAL, error.message);
      },
    );
  }

  _connected(gen, reply) {
    clearTimeout(this._timers.open);
    this._ready = true;
    this._readyAt = Date.now();
    this.user = reply.user;
    this.session = reply.session;
    this.expiresAt = reply.expires_at ?? null;
    this._scheduleRefresh(gen);
    this._schedulePing(gen, (reply.ping_interval ?? 25) * 1000);
    const recoveries = [];
    const answered = new Set();
    for (const result of reply.rooms ?? []) {
      // The user's own room is always in the reply, asked for or not.
      const room = this.room(result.room);
      answered.add(room);
      if (result.error) room._joinFailed(gen, new RealtimeError(result.error.code, result.error.message));
      else {
        room._wanted = true;
        room._beginJoin();
        recoveries.push(room._joined(gen, result));
      }
    }
    // Rooms past the 100 a connect takes, and rooms join()ed while it was under way.
    for (const room of this._rooms.values()) {
      if (room._wanted && !answered.has(room)) recoveries.push(room._rejoin());
    }
    this._pump();
    if (this._options.syncNotifications) recoveries.push(this.notifications._sync(gen));
    Promise.allSettled(recoveries).then(() => {
      if (gen !== this._gen || !this._ready) return;
      this._setState(this._wasOnline ? State.RECOVERED : State.ONLINE);
      this._wasOnline = true;
      for (const waiter of this._connectWaiters.splice(0)) waiter.resolve();
    });
  }

  /** The connection ended (a close event, or we gave up on it). */
  _lost(code, reason) {
    const wasReady = this._ready;
    // The backoff starts over only after a connection that lasted: a server that
    // answers connect and then closes at once is retried ever more slowly.
    if (wasReady && Date.now() - this._readyAt > STABLE_MS) this._attempt = 0;
    this._detach();
    this._emit('disconnected', { code, reason: reasonText(reason), wasReady });
    if (code === CloseCode.UNAUTHORIZED || code === CloseCode.TOKEN_EXPIRED) {
      if (typeof this._options.getToken !== 'function') {
        this._shutdown(code, reason, new RealtimeError('unauthorized', reasonText(reason) || 'unauthorized'));
        return;
      }
      this._tokenStale = true;
    }
    if (code === CloseCode.FORBIDDEN || code === CloseCode.DISCONNECTED) {
      this._shutdown(code, reason, new RealtimeError(code === CloseCode.FORBIDDEN ? 'forbidden' : 'disconnected', reasonText(reason)));
      return;
    }
    this._retry(code, reason);
  }

  /** Gives up on the current socket at once (no waiting for a close handshake). */
  _drop(code, reason) {
    const ws = this._ws;
    if (ws) {
      ws.onopen = ws.onmessage = ws.onclose = null;
      try {
        ws.close(CloseCode.NORMAL);
      } catch {
        // already closing
      }
    }
    this._lost(code, reason);
  }

  _detach() {
    this._gen += 1;
    this._ws = null;
    this._ready = false;
    for (const name of ['open', 'ping', 'refresh', 'reconnect']) clearTimeout(this._timers[name]);
    for (const call of this._inFlight.values()) {
      if (call.retry) this._requeue(call);
      else this._settle(call, new RealtimeError('disconnected', 'the connection was lost'));
    }
    this._inFlight.clear();
    this._lanes.clear();
    for (const room of this._rooms.values()) room._connectionLost();
  }

  _retry(code, reason) {
    if (this._stopped) return;
    const advice = parseAdvice(reason);
    const delay = advice
      ? advice.low + Math.random() * (advice.high - advice.low)
      : backoffDelay(this._attempt, this._options.minReconnectDelay, this._options.maxReconnectDelay);
    this._attempt += 1;
    this._setState(this._wasOnline ? State.RECONNECTING : State.CONNECTING, { code, reason: reasonText(reason), delay });
    clearTimeout(this._timers.reconnect);
    this._timers.reconnect = setTimeout(() => this._open(), delay);
  }

  _shutdown(code, reason, error) {
    this._stopped = true;
    this._closed = true; // calls fail at once until connect() again
    const ws = this._ws;
    this._detach();
    if (ws) {
      ws.onopen = ws.onmessage = ws.onclose = null;
      try {
        ws.close(CloseCode.NORMAL);
      } catch {
        // already closing
      }
    }
    clearTimeout(this._timers.pause);
    this._paused = false;
    const closed = error ?? new RealtimeError('closed', 'the client was closed');
    for (const call of this._queue.splice(0)) this._settle(call, closed);
    for (const room of this._rooms.values()) room._clientClosed(closed);
    for (const waiter of this._connectWaiters.splice(0)) waiter.reject(closed);
    this._setState(State.CLOSED, { code, reason: reasonText(reason), error });
  }

  _setState(state, details = {}) {
    if (state === this.state) return;
    const previous = this.state;
    this.state = state;
    const change = { state, previous, ...details };
    this._emit('state', change);
    this._emit(state, change);
  }

  _scheduleRefresh(gen) {
    clearTimeout(this._timers.refresh);
    if (typeof this._options.getToken !== 'function' || this.expiresAt === null) return;
    const left = this.expiresAt * 1000 - Date.now();
    const lead = Math.min(60000, Math.max(1000, left / 5));
    this._timers.refresh = setTimeout(() => this._refresh(gen), Math.max(0, left - lead));
  }

  async _refresh(gen) {
    try {
      const token = await this._options.getToken();
      if (gen !== this._gen) return;
      if (!token) throw new RealtimeError('unauthorized', 'getToken gave no token');
      const reply = await this._request('refresh', { token });
      if (gen !== this._gen) return;
      this._token = token;
      this.expiresAt = reply.expires_at;
      this._scheduleRefresh(gen);
    } catch (error) {
      if (gen !== this._gen || error.code === 'disconnected') return;
      this._emit('error', error);
      // Try again soon; if the token runs out first the server closes with 4010
      // and the reconnect asks getToken() again.
      this._timers.refresh = setTimeout(() => this._refresh(gen), 5000);
    }
  }

  _schedulePing(gen, interval) {
    // The server pings, but a browser cannot see pings: a dead link shows only as
    // a command without an answer.
    clearTimeout(this._timers.ping);
    this._timers.ping = setTimeout(() => {
      this._request('ping', {}).then(
        () => {
          if (gen === this._gen) this._schedulePing(gen, interval);
        },
        (error) => {
          if (gen === this._gen && error.code === 'timeout') this._drop(CloseCode.ABNORMAL, 'no answer to ping');
        },
      );
    }, interval);
  }

  // Frames ------------------------------------------------------------------------------

  _onFrame(data) {
    const text = typeof data === 'string' ? data : new TextDecoder().decode(data);
    // The server may pack several messages in one frame, one per line.
    for (const line of text.split('\n')) {
      if (!line.trim()) continue;
      let message;
      try {
        message = JSON.parse(line);
      } catch (error) {
        this._emit('error', new RealtimeError('bad_frame', `unreadable frame: ${error.message}`));
        continue;
      }
      // A notification push has an `id` too: what tells a push is `push`.
      if (typeof message.push === 'string') this._onPush(message);
      else if (message.id !== undefined) this._onReply(message);
    }
  }

  _onPush(push) {
    if (push.push === 'notification') {
      this.notifications._onPush(push);
      return;
    }
    if (push.push === 'joined') {
      this.room(push.room)._serverJoined(this._gen, push);
      return;
    }
    const room = this._rooms.get(push.room);
    if (!room) return;
    switch (push.push) {
      case 'message':
        room._onMessage(push);
        break;
      case 'typing':
        room._onTyping(push);
        break;
      case 'presence':
        room._onPresence(push);
        break;
      case 'read':
        room._onRead(push);
        break;
      case 'left':
        room._serverLeft(push.reason);
        break;
      case 'lagged':
        room._onLagged(push.seq);
        break;
      default:
        break; // a push this version does not know
    }
  }

  // Commands ------------------------------------------------------------------------------

  /**
   * An app command: queued while offline, sent again after a reconnect until
   * answered (every op is safe to repeat: `send` carries a client_id), retried
   * on `unavailable`/`rate_limited` when `retry`, rejected after `timeout` ms (0: never).
   */
  _call(op, args, { timeout = this._options.timeout, retryErrors = false, lane = null } = {}) {
    if (this._closed) return Promise.reject(new RealtimeError('closed', 'the client was closed'));
    return new Promise((resolve, reject) => {
      const call = { op, args, resolve, reject, retry: true, retryErrors, lane, order: ++this._callSeq, timer: null, id: null };
      if (timeout > 0) {
        call.timer = setTimeout(() => {
          this._forget(call);
          this._settle(call, new RealtimeError('timeout', `${op}: no answer within ${timeout} ms`));
          this._pump();
        }, timeout);
      }
      this._queue.push(call);
      this._pump();
    });
  }

  /** A command on the current connection only: it fails when the connection does. */
  _request(op, args, timeout = this._options.timeout) {
    return new Promise((resolve, reject) => {
      const call = { op, args, resolve, reject, retry: false, retryErrors: false, lane: null, timer: null, id: null };
      if (!this._ws || this._ws.readyState !== OPEN) {
        reject(new RealtimeError('disconnected', 'not connected'));
        return;
      }
      call.timer = setTimeout(() => {
        this._inFlight.delete(call.id);
        this._settle(call, new RealtimeError('timeout', `${op}: no answer within ${timeout} ms`));
      }, timeout);
      this._transmit(call);
    });
  }

  _pump() {
    // A window of commands in flight: a burst of resends after a reconnect must
    // not run into the server's rate limit (100 refusals in a row close with 4008).
    // Calls in one lane (a room's sends) go one at a time, so a retried one never
    // lets a later one overtake it: a room's messages are stored in the order sent.
    if (!this._ready || this._paused) return;
    for (let i = 0; i < this._queue.length && this._inFlight.size < this._options.maxInFlight; ) {
      const call = this._queue[i];
      if (call.lane !== null && this._lanes.has(call.lane)) {
        i += 1;
        continue;
      }
      this._queue.splice(i, 1);
      this._transmit(call);
    }
  }

  _transmit(call) {
    call.id = this._nextId++;
    if (call.lane !== null) this._lanes.add(call.lane);
    this._inFlight.set(call.id, call);
    this._write({ id: call.id, op: call.op, ...call.args });
  }

  _write(message) {
    if (this._ws && this._ws.readyState === OPEN) this._ws.send(JSON.stringify(message));
  }

  _onReply(reply) {
    const call = this._inFlight.get(reply.id);
    if (!call) return; // timed out already
    this._inFlight.delete(reply.id);
    if (call.lane !== null) this._lanes.delete(call.lane);
    if (reply.error) {
      const { code, message } = reply.error;
      if (call.retry && call.retryErrors && RETRY_CODES.has(code)) {
        this._requeue(call);
        this._pause();
      } else {
        this._settle(call, new RealtimeError(code, message));
      }
    } else {
      this._settle(call, null, reply.ok);
    }
    this._pump();
  }

  _pause() {
    if (this._paused) return;
    this._paused = true;
    this._timers.pause = setTimeout(() => {
      this._paused = false;
      this._pump();
    }, 250 + Math.random() * 750);
  }

  _requeue(call) {
    call.id = null;
    // Keep the order the app made its calls in (resends go out as first sent).
    const index = this._queue.findIndex((other) => other.order > call.order);
    if (index < 0) this._queue.push(call);
    else this._queue.splice(index, 0, call);
  }

  _forget(call) {
    if (call.id !== null && this._inFlight.delete(call.id) && call.lane !== null) this._lanes.delete(call.lane);
    const index = this._queue.indexOf(call);
    if (index >= 0) this._queue.splice(index, 1);
  }

  _settle(call, error, value) {
    clearTimeout(call.timer);
    if (error) call.reject(error);
    else call.resolve(value);
  }
}

// Rooms ---------------------------------------------------------------------------------

export class Room extends Emitter {
  constructor(client, name, options) {
    super();
    this.client = client;
    this.name = name;
    this.state = RoomState.LEFT;
    /** The last seq delivered to the app (null: none yet). */
    this.seq = options.since ?? null;
    this.epoch = options.epoch ?? null;
    /** Users present (where the namespace has presence). */
    this.presence = [];
    /** Users typing right now. */
    this.typingUsers = new Set();
    /** Read marks seen: user -> seq. */
    this.reads = new Map();
    this._token = options.token ?? null;
    this._wanted = false;
    this._buffer = null; // live messages held while catching up
    this._catchingUp = false;
    this._backfill = 0;
    this._joinWaiters = [];
    this._retryTimer = null;
    this._typingSentAt = 0;
    this._typingActive = false;
    this._readMark = 0;
    this._readWanted = 0;
    this._readWaiters = [];
    this._readFlight = false;
  }

  /**
   * Joins the room (again after every reconnect, until `leave()`). Resolves once
   * joined and caught up. `history: N` delivers the last N messages first, as
   * `message` events in seq order, then the live ones.
   */
  join({ history = 0 } = {}) {
    this._wanted = true;
    if (this.state === RoomState.JOINED) return Promise.resolve(this._info());
    if (this.seq === null) this._backfill = history;
    const waiting = handled(new Promise((resolve, reject) => this._joinWaiters.push({ resolve, reject })));
    if (this.client._ready && this.state !== RoomState.JOINING) this._rejoin();
    return waiting;
  }

  /** Leaves the room; it is not joined again on reconnect. */
  async leave() {
    const wasJoined = this.state !== RoomState.LEFT;
    this._wanted = false;
    this._setState(RoomState.LEFT);
    this._buffer = null;
    this._rejectJoin(new RealtimeError('closed', 'left the room'));
    clearTimeout(this._retryTimer);
    if (wasJoined && this.client._ready) {
      try {
        await this.client._request('leave', { room: this.name });
      } catch (error) {
        // A lost connection left the room already.
        if (error.code !== 'disconnected') throw error;
      }
    }
  }

  /**
   * Sends a message; resolves when the server has stored it. Queued while offline
   * and sent again after a reconnect, with the same client_id, until acknowledged.
   * A room's sends go one at a time, so they are stored in the order they were made.
   * `timeout` (ms, default 0: none) gives up waiting; the message may still be stored,
   * and sending it again with the same `clientId` stores it at most once.
   * @returns {Promise<{room: string, seq: number | null, ts: number, duplicate: boolean, clientId: string}>}
   */
  send(body, { clientId, timeout = 0 } = {}) {
    const id = clientId ?? this.client.newClientId();
    if (this._typingActive) this.typing(false);
    return this.client
      ._call('send', { room: this.name, body, client_id: id }, { timeout, retryErrors: true, lane: `send ${this.name}` })
      .then((ok) => ({ room: ok.room, seq: ok.seq, ts: ok.ts, duplicate: Boolean(ok.duplicate), clientId: id }));
  }

  /** One page of history: `{messages, more, epoch}` (ascending seq). */
  history({ before, after, limit } = {}) {
    const args = { room: this.name };
    if (before !== undefined) args.before = before;
    if (after !== undefined) args.after = after;
    if (limit !== undefined) args.limit = limit;
    return this.client._call('history', args);
  }

  /** Who is present, asked of the server. */
  async fetchPresence() {
    const { users } = await this.client._call('presence', { room: this.name });
    return users;
  }

  /**
   * Says the user types (`active` true) or stopped. Throttled: while typing, at
   * most one `typing` command per `typingInterval` ms. Returns whether one was sent.
   */
  typing(active = true) {
    if (!this.client._ready || this.state !== RoomState.JOINED) return false;
    const now = Date.now();
    if (active && this._typingActive && now - this._typingSentAt < this.client._options.typingInterval) {
      return false;
    }
    if (!active && !this._typingActive) return false;
    this._typingActive = active;
    this._typingSentAt = now;
    this.client._write({ op: 'typing', room: this.name, active });
    return true;
  }

  /**
   * Moves this user's read mark to `seq` (default: the last message delivered).
   * Calls made while one is under way are folded into one. Resolves with the
   * stored mark (which never moves back).
   */
  read(seq = this.seq) {
    if (seq === null || seq === undefined || (seq <= this._readMark && !this._readFlight)) {
      return Promise.resolve(this._readMark);
    }
    this._readWanted = Math.max(this._readWanted, seq);
    // Read marks are fire-and-forget for most apps: ignoring this promise is fine.
    const waiting = handled(new Promise((resolve, reject) => this._readWaiters.push({ seq, resolve, reject })));
    if (!this._readFlight) this._sendRead();
    return waiting;
  }

  async _sendRead() {
    this._readFlight = true;
    try {
      while (this._readWaiters.length) {
        const target = this._readWanted;
        let ok;
        try {
          ok = await this.client._call('read', { room: this.name, seq: target }, { timeout: 0, retryErrors: true });
        } catch (error) {
          for (const waiter of this._readWaiters.splice(0)) waiter.reject(error);
          return;
        }
        this._readMark = Math.max(this._readMark, ok.seq);
        const done = this._readWaiters.filter((waiter) => waiter.seq <= target);
        this._readWaiters = this._readWaiters.filter((waiter) => waiter.seq > target);
        for (const waiter of done) waiter.resolve(this._readMark);
      }
    } finally {
      this._readFlight = false;
    }
  }

  // Joining and catching up -----------------------------------------------------------

  _info() {
    return { room: this.name, seq: this.seq, epoch: this.epoch, presence: this.presence };
  }

  _joinArgs() {
    const args = { room: this.name };
    if (this.seq !== null) {
      args.since = this.seq;
      if (this.epoch) args.epoch = this.epoch;
    }
    if (this._token) args.token = this._token;
    return args;
  }

  _setState(state) {
    if (state === this.state) return;
    const previous = this.state;
    this.state = state;
    this._emit('state', { state, previous });
  }

  /** From here until caught up, live messages wait in the buffer. */
  _beginJoin() {
    clearTimeout(this._retryTimer);
    this._buffer ??= [];
    this._setState(RoomState.JOINING);
  }

  /** Joins on the current connection (after a reconnect beyond 100 rooms, a lagged push, or join()). */
  _rejoin() {
    const gen = this.client._gen;
    this._beginJoin();
    return this.client._request('join', this._joinArgs()).then(
      (result) => this._joined(gen, result),
      (error) => this._joinFailed(gen, error),
    );
  }

  _joinFailed(gen, error) {
    if (gen !== this.client._gen || error.code === 'disconnected') return;
    if (FATAL_JOIN_CODES.has(error.code)) {
      this._wanted = false;
      this._buffer = null;
      this._setState(RoomState.LEFT);
      this._emit('error', error);
      this._rejectJoin(error);
      return;
    }
    // unavailable, rate_limited, a timeout: try again on this connection, later.
    this._emit('error', error);
    const delay = backoffDelay(2, this.client._options.minReconnectDelay, this.client._options.maxReconnectDelay);
    this._retryTimer = setTimeout(() => {
      if (gen === this.client._gen && this._wanted) this._rejoin();
    }, delay);
  }

  /** A join result (from join, connect or a joined push): deliver what was missed, fill any gap. */
  async _joined(gen, result) {
    if (gen !== this.client._gen || !this._wanted) return;
    this._buffer ??= [];
    const resumed = this.seq !== null;
    const reset = resumed && this.epoch !== null && result.epoch !== this.epoch;
    const report = {
      room: this.name,
      recovered: Boolean(result.recovered),
      reset,
      from: this.seq,
      to: result.seq,
      missed: 0,
      filled: 0,
      lost: 0,
    };
    this.epoch = result.epoch;
    if (result.presence) {
      this.presence = [...result.presence];
      this._emit('presence', { room: this.name, event: 'sync', user: null, users: this.presence });
    }
    let fill = false;
    if (!resumed) {
      // A first join: start at the latest seq, or N before it for join({history: N}).
      this.seq = Math.max(0, result.seq - this._backfill);
      fill = this.seq < result.seq;
      this._backfill = 0;
    } else if (reset) {
      // The history this seq came from is gone: the new one starts from scratch.
      this.seq = 0;
      this._emit('reset', { room: this.name, epoch: this.epoch });
      fill = result.seq > 0;
    } else if (!result.recovered && this.seq > result.seq) {
      // Beyond the room's latest seq: that history is gone too, whatever the epoch says.
      report.reset = true;
      this.seq = 0;
      this._emit('reset', { room: this.name, epoch: this.epoch });
      fill = result.seq > 0;
    } else {
      for (const message of result.missed ?? []) if (this._deliver(message)) report.missed += 1;
      fill = !result.recovered && this.seq < result.seq;
    }
    if (fill && !(await this._fill(gen, report))) return;
    if (gen !== this.client._gen || !this._wanted) return;
    this._setState(RoomState.JOINED);
    for (const waiter of this._joinWaiters.splice(0)) waiter.resolve(this._info());
    if (resumed) this._emit('recovery', report);
    this._drain(gen);
  }

  /** Reads history after `this.seq` page by page until no more; false if the connection went. */
  async _fill(gen, report) {
    this._catchingUp = true;
    try {
      for (;;) {
        let page;
        try {
          page = await this.client._request('history', { room: this.name, after: this.seq, limit: HISTORY_PAGE });
        } catch (error) {
          if (gen !== this.client._gen || error.code === 'disconnected') return false;
          // The gap stays closed to live messages: rejoin and try again.
          this._joinFailed(gen, error);
          return false;
        }
        if (gen !== this.client._gen || !this._wanted) return false; // lost, or left meanwhile
        if (page.epoch && this.epoch && page.epoch !== this.epoch) {
          // History reset while we read it: start over in the new one.
          this.epoch = page.epoch;
          this.seq = 0;
          report.reset = true;
          this._emit('reset', { room: this.name, epoch: this.epoch });
          continue;
        }
        for (const message of page.messages) {
          if (message.seq > this.seq + 1) report.lost += message.seq - this.seq - 1; // expired from history
          if (this._deliver(message)) report.filled += 1;
        }
        if (!page.more || !page.messages.length) return true;
      }
    } finally {
      this._catchingUp = false;
    }
  }

  /** Lets the held live messages through, in seq order; a hole in them is filled first. */
  _drain(gen) {
    const held = this._buffer ?? [];
    this._buffer = null;
    held.sort((a, b) => a.seq - b.seq);
    for (let i = 0; i < held.length; i += 1) {
      const message = held[i];
      if (message.seq !== null && this.seq !== null && message.seq > this.seq + 1) {
        // Not supposed to happen on one connection; fill it rather than skip.
        this._buffer = held.slice(i);
        this._fillGap(gen);
        return;
      }
      this._deliver(message);
    }
  }

  async _fillGap(gen) {
    const report = { room: this.name, recovered: false, reset: false, from: this.seq, to: null, missed: 0, filled: 0, lost: 0 };
    if (!(await this._fill(gen, report))) return;
    this._emit('recovery', report);
    this._drain(gen);
  }

  _deliver(message) {
    if (message.seq !== null && message.seq !== undefined) {
      if (this.seq !== null && message.seq <= this.seq) return false;
      this.seq = message.seq;
    }
    this._emit('message', message);
    this.client._emit('message', message);
    return true;
  }

  // Pushes ----------------------------------------------------------------------------

  _onMessage(message) {
    if (this.state === RoomState.LEFT && !this._wanted) return;
    if (message.seq === null || message.seq === undefined) {
      if (this.state === RoomState.JOINED) this._deliver(message); // a room without history
      return;
    }
    if (this._buffer) {
      this._buffer.push(message);
      return;
    }
    if (message.seq <= this.seq) return;
    if (message.seq === this.seq + 1) {
      this._deliver(message);
      return;
    }
    this._buffer = [message];
    this._fillGap(this.client._gen);
  }

  _onTyping({ user, active }) {
    if (active) this.typingUsers.add(user);
    else this.typingUsers.delete(user);
    this._emit('typing', { room: this.name, user, active });
  }

  _onPresence({ user, event }) {
    const users = new Set(this.presence);
    if (event === 'join') users.add(user);
    else users.delete(user);
    this.presence = [...users];
    this._emit('presence', { room: this.name, event, user, users: this.presence });
  }

  _onRead({ user, seq }) {
    this.reads.set(user, seq);
    this._emit('read', { room: this.name, user, seq });
  }

  _onLagged(seq) {
    // The server stopped this room's stream at `seq` because we read too slowly:
    // join again from where we are (we have everything up to seq).
    if (this.state !== RoomState.JOINED || !this.client._ready) return;
    this._emit('lagged', { room: this.name, seq });
    this._rejoin();
  }

  _serverJoined(gen, push) {
    this._wanted = true;
    this._beginJoin();
    this._joined(gen, push).then(() => {
      if (gen === this.client._gen) this.client._emit('joined', { room: this, reason: push.reason });
    });
    this._emit('joined', { room: this.name, reason: push.reason });
  }

  _serverLeft(reason) {
    this._wanted = false;
    this._buffer = null;
    this._setState(RoomState.LEFT);
    this._rejectJoin(new RealtimeError('forbidden', `taken out of the room: ${reason}`));
    this._emit('left', { room: this.name, reason });
    this.client._emit('left', { room: this, reason });
  }

  _connectionLost() {
    clearTimeout(this._retryTimer);
    this._buffer = null; // the rejoin's `since` brings these again
    this._typingActive = false;
    for (const user of this.typingUsers) this._emit('typing', { room: this.name, user, active: false });
    this.typingUsers.clear();
    if (this._wanted) this._setState(RoomState.JOINING);
  }

  _clientClosed(error) {
    this._rejectJoin(error);
    if (this.state !== RoomState.LEFT) this._setState(RoomState.LEFT);
  }

  _rejectJoin(error) {
    for (const waiter of this._joinWaiters.splice(0)) waiter.reject(error);
  }
}

// Notifications ---------------------------------------------------------------------------

export class Notifications {
  constructor(client) {
    this._client = client;
    /** The unread count last known (null until the server told it). */
    this.unread = null;
    this._lastId = null; // the highest id seen
    this._seen = new Set();
  }

  /** A page of notifications: `{items, unread_count}`; `after` pages forward. */
  async list({ after, limit, unread } = {}) {
    const args = {};
    if (after !== undefined) args.after = after;
    if (limit !== undefined) args.limit = limit;
    if (unread !== undefined) args.unread = unread;
    const page = await this._client._call('notifications', args);
    for (const item of page.items) this._note(item.id);
    this._setUnread(page.unread_count);
    return page;
  }

  /** The number of unread notifications, asked of the server. */
  async unreadCount() {
    const page = await this._client._call('notifications', { limit: 1, unread: true });
    this._setUnread(page.unread_count);
    return page.unread_count;
  }

  /** Marks notifications read: `{ids: [...]}` or `{upTo: id}`. Resolves with the unread count. */
  async markRead({ ids, upTo } = {}) {
    const args = ids !== undefined ? { ids } : { up_to: upTo };
    const ok = await this._client._call('notifications.read', args, { retryErrors: true });
    this._setUnread(ok.unread_count);
    return ok.unread_count;
  }

  _note(id) {
    this._seen.add(id);
    if (this._seen.size > 1000) this._seen.delete(this._seen.values().next().value);
    if (this._lastId === null || id > this._lastId) this._lastId = id;
  }

  _setUnread(count) {
    if (count === this.unread) return;
    this.unread = count;
    this._client._emit('unread', count);
  }

  _onPush(push) {
    if (this._seen.has(push.id)) return;
    this._note(push.id);
    const { push: _kind, ...item } = push;
    this._client._emit('notification', item);
    if (this.unread !== null && !item.read) this._setUnread(this.unread + 1);
  }

  /** After a (re)connect: the unread count, and what arrived while we were away. */
  async _sync(gen) {
    const client = this._client;
    try {
      if (this._lastId === null) {
        const page = await client._request('notifications', { limit: 1 });
        if (gen !== client._gen) return;
        for (const item of page.items) this._note(item.id);
        if (this._lastId === null) this._lastId = 0;
        this._setUnread(page.unread_count);
        return;
      }
      for (;;) {
        const page = await client._request('notifications', { after: this._lastId, limit: HISTORY_PAGE });
        if (gen !== client._gen) return;
        for (const item of page.items) this._onPush(item);
        this._setUnread(page.unread_count);
        if (page.items.length < HISTORY_PAGE) return;
      }
    } catch (error) {
      if (gen === client._gen && error.code !== 'disconnected') client._emit('error', error);
    }
  }
}
