// Three instances behind nginx, one killed (-9) mid-stream (needs RT_CONTROL_URL).
//
// Every client connects through nginx (round robin, no sticky sessions), so some
// sit on the instance that dies; they reconnect through nginx to another one,
// rejoin with since/epoch, and the sender resends what was not acknowledged.
// Every receiver must end with every acknowledged message exactly once, in order.
import assert from 'node:assert/strict';
import { after, test } from 'node:test';

import { allMessages, client, closeAll, control, env, range, recorder, restRetried, skipReason, stream, unique, until } from './support.js';

const COUNT = Number(process.env.RT_STREAM_COUNT ?? 240);
const RECEIVERS = 6;

after(closeAll);

test('one of three instances killed: every acknowledged message once, in order', {
  skip: skipReason ?? (env.controlUrl ? false : 'needs RT_CONTROL_URL'),
  timeout: 240000,
}, async (t) => {
  const name = unique('swap:');
  const users = [unique('s'), ...Array.from({ length: RECEIVERS }, () => unique('r'))];
  for (const user of users) await restRetried('PUT', `/api/v1/rooms/${name}/members/${user}`);
  const clients = users.map((user) => client(user));
  const lost = new Array(clients.length).fill(0);
  clients.forEach((c, i) => c.on('disconnected', () => (lost[i] += 1)));
  const rooms = clients.map((c) => c.room(name));
  const seen = rooms.slice(1).map(recorder);
  await Promise.all(clients.map((c) => c.connect()));
  await Promise.all(rooms.map((room) => room.join()));

  let killed = false;
  const acks = await stream(rooms[0], COUNT, {
    progress: async (acked) => {
      if (acked >= COUNT / 3 && !killed) {
        killed = true;
        await control('kill', 1);
      }
    },
  });
  const last = Math.max(...acks.map((ack) => ack.seq));
  await until(() => seen.every((s) => s.seqs.at(-1) === last), 90000, 'every receiver');
  t.diagnostic(`connections lost per client: ${lost.join(' ')}`);

  assert.deepEqual(acks.map((ack) => ack.seq), range(1, COUNT));
  const stored = await allMessages(name);
  assert.deepEqual(stored.map((m) => m.body.i), range(0, COUNT - 1));
  for (const s of seen) {
    assert.deepEqual(s.seqs, range(1, COUNT));
    assert.deepEqual(s.bodies.map((b) => b.i), range(0, COUNT - 1));
  }
  // nginx spread the clients, so some were on the instance that died.
  assert.ok(lost.some((n) => n > 0), lost.join());
  for (const [i, c] of clients.entries()) {
    if (lost[i]) assert.equal(c.state, 'recovered');
  }
});
