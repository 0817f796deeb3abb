// Protocol cases against a scripted server (test/scripted.js): lagged pushes,
// reconnect advice, packed frames, gaps and duplicates in the stream, resends,
// retried errors, heartbeats, token refresh and the closes that end a client.
import assert from 'node:assert/strict';
import { afterEach, beforeEach, describe, test } from 'node:test';

import { RealtimeClient, backoffDelay, parseAdvice, reasonText } from '../realtime.js';
import { ScriptedServer } from './scripted.js';
import { WebSocketImpl, range, until } from './support.js';

const ROOM = 'swap:1';

describe('pure helpers', () => {
  test('parseAdvice reads the retry window at the end of a close reason', () => {
    assert.deepEqual(parseAdvice('server restarting: reconnect; retry_ms=500-17166'), { low: 500, high: 17166 });
    assert.deepEqual(parseAdvice('too slow;retry_ms=0-10 '), { low: 0, high: 10 });
    assert.equal(parseAdvice('server restarting: reconnect'), null);
    assert.equal(parseAdvice('x; retry_ms=9-1'), null, 'high below low');
    assert.equal(parseAdvice(undefined), null);
    assert.equal(reasonText('server restarting: reconnect; retry_ms=500-1000'), 'server restarting: reconnect');
  });

  test('backoffDelay: full jitter below an exponential cap', () => {
    assert.equal(backoffDelay(0, 500, 30000, () => 0.999999) < 500, true);
    assert.equal(backoffDelay(3, 500, 30000, () => 0.5), 2000);
    assert.equal(backoffDelay(20, 500, 30000, () => 0.5), 15000);
    assert.equal(backoffDelay(5, 500, 30000, () => 0), 0);
  });
});

describe('against a scripted server', () => {
  let server;
  let clients;

  beforeEach(async () => {
    server = await new ScriptedServer().start();
    clients = [];
  });

  afterEach(async () => {
    for (const c of clients) c.close();
    await server.stop();
  });

  function connectClient(options = {}) {
    const c = new RealtimeClient(server.url, {
      token: 't',
      WebSocket: WebSocketImpl,
      minReconnectDelay: 50,
      maxReconnectDelay: 200,
      ...options,
    });
    clients.push(c);
    return c;
  }

  async function joined(options) {
    const c = connectClient(options);
    const room = c.room(ROOM);
    const seqs = [];
    const recoveries = [];
    room.on('message', (m) => seqs.push(m.seq));
    room.on('recovery', (r) => recoveries.push(r));
    await c.connect();
    await room.join();
    return { c, room, seqs, recoveries };
  }

  test('several messages packed in one frame, one per line', async () => {
    const { seqs } = await joined();
    const [one, two] = [server.store(ROOM, 1).message, server.store(ROOM, 2).message];
    server.live[0].socket.send(`${JSON.stringify({ push: 'message', ...one })}\n${JSON.stringify({ push: 'message', ...two })}`);
    await until(() => seqs.length === 2, 10000, 'both');
    assert.deepEqual(seqs, [1, 2]);
  });

  test('a seq pushed twice is delivered once; a gap is filled from history first', async () => {
    const { seqs, recoveries } = await joined();
    const conn = server.live[0];
    const first = server.publish(ROOM, 'a');
    conn.push('message', first); // again
    server.store(ROOM, 'b'); // never pushed: a hole
    server.publish(ROOM, 'c');
    await until(() => seqs.length === 3, 10000, 'all three');
    assert.deepEqual(seqs, [1, 2, 3]);
    assert.equal(recoveries.length, 1, JSON.stringify(recoveries));
    assert.equal(recoveries[0].filled, 2, 'seq 3 came with the page, and its push was a duplicate');
    assert.ok(server.commands.some((c) => c.op === 'history' && c.after === 1));
  });

  test('lagged: the room is joined again with since on the same connection', async () => {
    const { c, seqs } = await joined();
    for (const i of range(1, 3)) server.publish(ROOM, i);
    await until(() => seqs.length === 3, 10000, 'the first three');
    // The server stops the room's stream at 3 (it has everything up to 3); more is stored.
    for (const i of range(4, 9)) server.store(ROOM, i);
    const lagged = [];
    c.room(ROOM).on('lagged', (l) => lagged.push(l.seq));
    server.live[0].push('lagged', { room: ROOM, seq: 3 });
    await until(() => seqs.length === 9, 10000, 'the rest');
    assert.deepEqual(seqs, range(1, 9));
    assert.deepEqual(lagged, [3]);
    const rejoin = server.commands.filter((cmd) => cmd.op === 'join').at(-1);
    assert.deepEqual([rejoin.conn, rejoin.since, rejoin.epoch], [0, 3, 'e1']);
    assert.equal(server.connections.length, 1, 'no reconnect');
    // and the stream resumes
    server.publish(ROOM, 10);
    await until(() => seqs.length === 10, 10000, 'live again');
  });

  test('recovered false: history pages fill the gap, live messages wait for them', async () => {
    server.recoveryLimit = 5;
    const { c, seqs, recoveries } = await joined();
    for (const i of range(1, 450)) server.store(ROOM, i); // missed while we are away
    // Every history page is answered after a live message overtook it.
    server.intercept = (conn, command) => {
      if (command.op !== 'history') return false;
      const page = server.history(command);
      server.publish(ROOM, 'live');
      conn.reply(command.id, page);
      return true;
    };
    server.live[0].socket.terminate();
    await until(() => recoveries.length === 1 && c.state === 'recovered', 20000, 'the recovery');
    const pages = server.commands.filter((cmd) => cmd.op === 'history');
    assert.ok(pages.length >= 3, `${pages.length} pages`);
    assert.deepEqual(seqs, range(1, server.messages.length));
    const { filled, ...report } = recoveries[0];
    assert.deepEqual(report, { room: ROOM, recovered: false, reset: false, from: 0, to: 450, missed: 5, lost: 0 });
    // From history: all but the live message that came after the last page.
    assert.equal(filled, seqs.length - 5 - 1, JSON.stringify({ total: seqs.length, pages: pages.map((p) => p.after) }));
  });

  test('a send without an answer is resent with its client_id after a reconnect, stored once', async () => {
    const { room, seqs } = await joined();
    let dropped = false;
    server.intercept = (conn, command) => {
      if (command.op === 'send' && !dropped) {
        dropped = true;
        server.store(ROOM, command.body, command.client_id); // stored, but the answer is lost
        conn.socket.terminate();
        return true;
      }
      return false;
    };
    const ack = await room.send({ text: 'once' });
    assert.equal(ack.seq, 1);
    assert.equal(ack.duplicate, true);
    const sends = server.commands.filter((cmd) => cmd.op === 'send');
    assert.deepEqual(sends.map((cmd) => cmd.conn), [0, 1]);
    assert.equal(sends[0].client_id, sends[1].client_id);
    assert.equal(server.messages.length, 1);
    await until(() => seqs.length === 1, 10000, 'the message, from the rejoin');
    assert.deepEqual(seqs, [1]);
  });

  test('unavailable and rate_limited sends are retried; a room keeps its order', async () => {
    const { room } = await joined();
    let refusals = 0;
    server.intercept = (conn, command) => {
      if (command.op === 'send' && refusals < 2) {
        refusals += 1;
        conn.error(command.id, refusals === 1 ? 'rate_limited' : 'unavailable');
        return true;
      }
      return false;
    };
    const acks = await Promise.all(range(1, 4).map((i) => room.send(i)));
    assert.deepEqual(acks.map((a) => a.seq), range(1, 4));
    assert.deepEqual(server.messages.map((m) => m.body), range(1, 4));
    await assert.rejects(
      (() => {
        server.intercept = (conn, command) => command.op === 'send' && (conn.error(command.id, 'too_large'), true);
        return room.send('x');
      })(),
      { code: 'too_large' },
    );
  });

  test('a close with reconnect advice: the delay is drawn from its window', async () => {
    const { c } = await joined();
    const changes = [];
    c.on('reconnecting', (change) => changes.push(change));
    server.live[0].socket.close(1012, 'server restarting: reconnect; retry_ms=300-400');
    await until(() => c.state === 'recovered', 10000, 'back');
    assert.equal(changes.length, 1);
    assert.equal(changes[0].code, 1012);
    assert.equal(changes[0].reason, 'server restarting: reconnect');
    // The backoff alone would have waited at most 50 ms (minReconnectDelay).
    assert.ok(changes[0].delay >= 300 && changes[0].delay <= 400, String(changes[0].delay));
  });

  test('without advice the backoff is used, and grows while the server stays away', async () => {
    const { c } = await joined();
    const delays = [];
    c.on('disconnected', () => {});
    c.on('state', (change) => change.delay !== undefined && delays.push(change.delay));
    server.intercept = (conn, command) => command.op === 'connect' && (conn.socket.close(1011, 'busy'), true);
    server.live[0].socket.close(1001, 'bye');
    await until(() => server.connections.length >= 5, 20000, 'retries');
    server.intercept = () => false;
    await until(() => c.state === 'recovered', 10000, 'back');
    assert.ok(delays[0] <= 50, String(delays[0]));
  });

  test('a ping without an answer drops the connection and reconnects', async () => {
    server.pingInterval = 0.05;
    server.intercept = (conn, command) => command.op === 'ping' && conn.index === 0;
    const { c } = await joined({ timeout: 300 });
    const lost = [];
    c.on('disconnected', (d) => lost.push(d.reason));
    await until(() => server.connections.length === 2 && c.state === 'recovered', 10000, 'a new connection');
    assert.deepEqual(lost, ['no answer to ping']);
  });

  test('getToken: refresh before expiry; a new token after 4001', async () => {
    let issued = 0;
    const getToken = async () => `t${++issued}`;
    server.intercept = (conn, command) => {
      if (command.op === 'connect') {
        if (command.token === 't1') {
          conn.socket.close(4001, 'token expired or invalid');
          return true;
        }
        conn.reply(command.id, {
          user: 'u',
          session: 's',
          rooms: [],
          ping_interval: 25,
          expires_at: Math.floor(Date.now() / 1000) + 2,
        });
        return true;
      }
      if (command.op === 'refresh') {
        conn.reply(command.id, { expires_at: Math.floor(Date.now() / 1000) + 3600 });
        return true;
      }
      return false;
    };
    const c = connectClient({ token: undefined, getToken });
    await c.connect();
    await until(() => server.commands.some((cmd) => cmd.op === 'refresh'), 10000, 'a refresh');
    const connects = server.commands.filter((cmd) => cmd.op === 'connect').map((cmd) => cmd.token);
    assert.deepEqual(connects, ['t1', 't2']);
    assert.equal(server.commands.find((cmd) => cmd.op === 'refresh').token, 't3');
    await until(() => c.expiresAt > Date.now() / 1000 + 60, 10000, 'the new expiry');
  });

  for (const [code, error] of [[4004, 'disconnected'], [4003, 'forbidden'], [4001, 'unauthorized']]) {
    test(`close ${code} ends the client (${error})`, async () => {
      const { c, room } = await joined();
      const pending = room.history().catch((e) => e);
      server.intercept = () => true; // the history call gets no answer before the close
      await until(() => server.commands.some((cmd) => cmd.op === 'history'), 10000, 'the call');
      server.live[0].socket.close(code, 'go away');
      await until(() => c.state === 'closed', 10000, 'closed');
      assert.equal((await pending).code, error);
      assert.equal(server.connections.length, 1);
    });
  }
});
