// kill -9 and restart of the server during a stream (needs RT_CONTROL_URL).
//
// A sender streams messages; the server is killed mid-stream and started again.
// One receiver reconnects as soon as it can; another is kept offline until far
// more than the recovery limit has been sent, so its rejoin says `recovered:
// false` and it must fill the gap from history while live messages keep coming.
// Both must end with every acknowledged message exactly once, in order.
import assert from 'node:assert/strict';
import { after, test } from 'node:test';

import {
  allMessages,
  client,
  closeAll,
  control,
  env,
  gated,
  range,
  recorder,
  restRetried,
  skipReason,
  stream,
  unique,
  until,
} from './support.js';

const COUNT = Number(process.env.RT_STREAM_COUNT ?? 400);
const KILL_AT = Math.floor(COUNT / 4);
const RELEASE_AT = Math.floor((COUNT * 3) / 4);

after(closeAll);

test('kill -9 during a stream: every acknowledged message once, in order', {
  skip: skipReason ?? (env.controlUrl ? false : 'needs RT_CONTROL_URL'),
  timeout: 240000,
}, async (t) => {
  const [sender, eager, late] = [unique('s'), unique('e'), unique('l')];
  const name = unique('swap:');
  for (const user of [sender, eager, late]) {
    await restRetried('PUT', `/api/v1/rooms/${name}/members/${user}`);
  }
  const gate = gated();
  const s = client(sender);
  const e = client(eager);
  const l = client(late, { WebSocket: gate.WebSocket });
  const rooms = [s, e, l].map((c) => c.room(name));
  const [eagerSeen, lateSeen] = [recorder(rooms[1]), recorder(rooms[2])];
  await Promise.all([s, e, l].map((c) => c.connect()));
  await Promise.all(rooms.map((room) => room.join()));

  let killed = false;
  let released = false;
  const acks = await stream(rooms[0], COUNT, {
    progress: async (acked) => {
      if (acked >= KILL_AT && !killed) {
        killed = true;
        gate.closed = true;
        await control('kill', 0);
        await control('start', 0);
      }
      if (acked >= RELEASE_AT && !released) {
        released = true;
        gate.closed = false;
      }
    },
  });
  const last = Math.max(...acks.map((ack) => ack.seq));
  await until(() => eagerSeen.seqs.at(-1) === last && lateSeen.seqs.at(-1) === last, 90000, 'both receivers');

  t.diagnostic(`recoveries: eager ${JSON.stringify(eagerSeen.recoveries)} late ${JSON.stringify(lateSeen.recoveries)}`);
  // Stored exactly once: seqs 1..COUNT, one per message, in the order sent.
  assert.deepEqual(acks.map((ack) => ack.seq), range(1, COUNT));
  const stored = await allMessages(name);
  assert.deepEqual(stored.map((m) => m.body.i), range(0, COUNT - 1));
  for (const seen of [eagerSeen, lateSeen]) {
    assert.deepEqual(seen.seqs, range(1, COUNT));
    assert.deepEqual(seen.bodies.map((b) => b.i), range(0, COUNT - 1));
    assert.ok(seen.states.includes('reconnecting') && seen.states.at(-1) === 'recovered', seen.states.join());
    assert.ok(seen.recoveries.length >= 1);
  }
  // The late one missed more than the recovery limit: history filled the gap.
  const report = lateSeen.recoveries.find((r) => !r.recovered);
  assert.ok(report, JSON.stringify(lateSeen.recoveries));
  assert.ok(report.filled > 0 && report.lost === 0 && !report.reset, JSON.stringify(report));
  assert.ok(s.state === 'recovered');
});
