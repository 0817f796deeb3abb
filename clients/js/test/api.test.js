// Every API call against a real server (see support.js for the environment).
import assert from 'node:assert/strict';
import { after, describe, test } from 'node:test';

import { RealtimeError } from '../realtime.js';
import { client, closeAll, env, range, recorder, rest, skipReason, sleep, token, unique, until } from './support.js';

async function swapRoom(...users) {
  const name = unique('swap:');
  for (const user of users) {
    const { status } = await rest('PUT', `/api/v1/rooms/${name}/members/${user}`);
    assert.equal(status, 204);
  }
  return name;
}

describe('against a real server', { skip: skipReason ?? false }, () => {
  after(closeAll);

  test('connect: states, user, session and the own room', async () => {
    const alice = unique('alice');
    const c = client(alice);
    const states = [];
    c.on('state', ({ state, previous }) => states.push(`${previous}>${state}`));
    assert.equal(c.state, 'closed');
    await c.connect();
    assert.deepEqual(states, ['closed>connecting', 'connecting>online']);
    assert.equal(c.user, alice);
    assert.ok(c.session);
    assert.ok(c.expiresAt > Date.now() / 1000);
    assert.equal(c.room(`user:${alice}`).state, 'joined');
    await c.ping();
    c.close();
    assert.equal(c.state, 'closed');
    await assert.rejects(c.room(`user:${alice}`).history(), { code: 'closed' });
  });

  test('chat: join, presence, send, message, duplicate client_id, typing, read', async () => {
    const [alice, bob] = [unique('alice'), unique('bob')];
    const name = await swapRoom(alice, bob);
    const a = client(alice);
    const b = client(bob);
    const aRoom = a.room(name);
    const bRoom = b.room(name);
    const aSeen = recorder(aRoom);
    const presence = [];
    aRoom.on('presence', (p) => presence.push(`${p.event}:${p.user}`));
    await a.connect();
    await aRoom.join();
    assert.deepEqual(aRoom.presence, [alice]);
    await b.connect();
    await bRoom.join();
    await until(() => presence.includes(`join:${bob}`), 10000, 'presence join');
    assert.deepEqual([...aRoom.presence].sort(), [alice, bob].sort());

    const first = await bRoom.send({ text: 'hi alice' });
    assert.equal(first.seq, 1);
    assert.equal(first.duplicate, false);
    await until(() => aSeen.seqs.length === 1, 10000, 'the message');
    assert.deepEqual(aSeen.bodies, [{ text: 'hi alice' }]);

    const again = await bRoom.send({ text: 'hi alice' }, { clientId: first.clientId });
    assert.deepEqual([again.seq, again.duplicate], [1, true]);
    const second = await aRoom.send({ text: 'hi bob' });
    assert.equal(second.seq, 2);
    await until(() => bRoom.seq === 2, 10000, "bob's copy");

    const typing = [];
    bRoom.on('typing', (t) => typing.push(`${t.user}:${t.active}`));
    assert.equal(aRoom.typing(), true);
    assert.equal(aRoom.typing(), false, 'throttled');
    await until(() => typing.includes(`${alice}:true`), 10000, 'typing');
    assert.ok(bRoom.typingUsers.has(alice));
    assert.equal(aRoom.typing(false), true);
    await until(() => typing.includes(`${alice}:false`), 10000, 'typing stopped');

    const reads = [];
    bRoom.on('read', (r) => reads.push(`${r.user}:${r.seq}`));
    await until(() => aRoom.seq === 2, 10000, "alice's own copy");
    // Folded: the second and third wait for one command that covers them.
    const marks = await Promise.all([aRoom.read(1), aRoom.read(2), aRoom.read()]);
    assert.ok(marks[0] >= 1);
    assert.deepEqual(marks.slice(1), [2, 2]);
    assert.equal(await aRoom.read(1), 2, 'never moves back');
    await until(() => reads.includes(`${alice}:2`), 10000, 'read push');
    assert.equal(bRoom.reads.get(alice), 2);

    assert.deepEqual((await bRoom.fetchPresence()).sort(), [alice, bob].sort());
    await bRoom.leave();
    assert.equal(bRoom.state, 'left');
    await until(() => presence.includes(`leave:${bob}`), 10000, 'presence leave');
    assert.deepEqual(aSeen.seqs, [1, 2]);
  });

  test('history: pages backward and forward; join({history}) delivers the last N first', async () => {
    const alice = unique('alice');
    const name = await swapRoom(alice);
    for (const i of range(1, 7)) await rest('POST', `/api/v1/rooms/${name}/messages`, { body: { i } });
    const a = client(alice);
    await a.connect();
    const room = a.room(name);
    const seen = recorder(room);
    const info = await room.join({ history: 3 });
    assert.equal(info.seq, 7);
    assert.deepEqual(seen.seqs, [5, 6, 7]);
    const latest = await room.history({ limit: 2 });
    assert.deepEqual(latest.messages.map((m) => m.seq), [6, 7]);
    assert.equal(latest.more, true);
    const older = await room.history({ before: 6, limit: 10 });
    assert.deepEqual(older.messages.map((m) => m.seq), range(1, 5));
    assert.equal(older.more, false);
    const forward = await room.history({ after: 5 });
    assert.deepEqual(forward.messages.map((m) => m.seq), [6, 7]);
    assert.ok(latest.epoch);
    await rest('POST', `/api/v1/rooms/${name}/messages`, { body: { i: 8 } });
    await until(() => seen.seqs.length === 4, 10000, 'live message');
    assert.deepEqual(seen.seqs, [5, 6, 7, 8]);
    assert.deepEqual(seen.recoveries, [], 'a first join is no recovery');
  });

  test('resume from a kept position: client.room(name, {since, epoch})', async () => {
    const alice = unique('alice');
    const name = await swapRoom(alice);
    for (const i of range(1, 5)) await rest('POST', `/api/v1/rooms/${name}/messages`, { body: { i } });
    const { body: page } = await rest('GET', `/api/v1/rooms/${name}/messages?limit=1`);
    const a = client(alice);
    const room = a.room(name, { since: 2, epoch: page.epoch });
    const seen = recorder(room);
    room.join();
    await a.connect();
    await until(() => room.state === 'joined', 10000, 'joined');
    assert.deepEqual(seen.seqs, [3, 4, 5]);
    assert.equal(seen.recoveries.length, 1);
    assert.deepEqual(
      { ...seen.recoveries[0], room: undefined },
      { room: undefined, recovered: true, reset: false, from: 2, to: 5, missed: 3, filled: 0, lost: 0 },
    );

    // A position from another epoch: the history it belonged to is gone.
    const b = client(alice);
    const stale = b.room(name, { since: 4, epoch: 'not-this-one' });
    const staleSeen = recorder(stale);
    const resets = [];
    stale.on('reset', (r) => resets.push(r));
    await b.connect();
    await stale.join();
    assert.equal(resets.length, 1);
    assert.deepEqual(staleSeen.seqs, range(1, 5), 'the new history from its start');
    assert.equal(staleSeen.recoveries[0].reset, true);
  });

  test('notifications: live event, unread count, list, mark read', async () => {
    const alice = unique('alice');
    const a = client(alice);
    const live = [];
    const unread = [];
    a.on('notification', (n) => live.push(n));
    a.on('unread', (count) => unread.push(count));
    await a.connect();
    await until(() => a.notifications.unread === 0, 10000, 'the unread count at connect');
    const { status, body } = await rest('POST', '/api/v1/notifications', {
      to: [alice],
      type: 'like',
      data: { post: 42 },
      actor: 'bob',
    });
    assert.deepEqual([status, body], [202, { recipients: 1 }]);
    await until(() => live.length === 1, 10000, 'the notification');
    assert.deepEqual(
      { type: live[0].type, data: live[0].data, actor: live[0].actor, read: live[0].read },
      { type: 'like', data: { post: 42 }, actor: 'bob', read: false },
    );
    assert.equal(a.notifications.unread, 1);
    await rest('POST', '/api/v1/notifications', { to: [alice], type: 'follow', data: {}, actor: 'carol' });
    await until(() => live.length === 2, 10000, 'the second notification');
    assert.equal(await a.notifications.unreadCount(), 2);
    const page = await a.notifications.list({ limit: 10 });
    assert.deepEqual(page.items.map((n) => n.type), ['like', 'follow']);
    assert.equal(page.unread_count, 2);
    assert.equal(await a.notifications.markRead({ ids: [live[0].id] }), 1);
    assert.equal((await a.notifications.list({ unread: true })).items.length, 1);
    assert.equal(await a.notifications.markRead({ upTo: live[1].id }), 0);
    assert.deepEqual(unread, [0, 1, 2, 1, 0]);
  });

  test('notifications that came while away arrive after the reconnect', async () => {
    const alice = unique('alice');
    const a = client(alice);
    const live = [];
    a.on('notification', (n) => live.push(n.data.n));
    await a.connect();
    await until(() => a.notifications.unread === 0, 10000, 'the unread count at connect');
    await rest('POST', '/api/v1/notifications', { to: [alice], type: 't', data: { n: 1 } });
    await until(() => live.length === 1, 10000, 'the first');
    const gone = new Promise((resolve) => a.once('disconnected', resolve));
    await rest('POST', `/api/v1/users/${alice}/disconnect`, { reason: 'test' });
    // 4004 closes for good: connect again, as an app would after such a close.
    await gone;
    await until(() => a.state === 'closed', 10000, 'closed');
    await rest('POST', '/api/v1/notifications', { to: [alice], type: 't', data: { n: 2 } });
    await a.connect();
    await until(() => live.length === 2, 10000, 'the one sent while away');
    assert.deepEqual(live, [1, 2]);
    assert.equal(a.notifications.unread, 2);
  });

  test('the server joins and takes out: joined and left events', async () => {
    const alice = unique('alice');
    const a = client(alice);
    const events = [];
    a.on('joined', ({ room, reason }) => events.push(`joined:${room.name}:${reason}`));
    a.on('left', ({ room, reason }) => events.push(`left:${room.name}:${reason}`));
    await a.connect();
    const name = unique('swap:');
    await rest('POST', `/api/v1/rooms/${name}/messages`, { body: 'before' });
    await rest('PUT', `/api/v1/rooms/${name}/members/${alice}`);
    await until(() => events.length === 1, 10000, 'joined');
    assert.deepEqual(events, [`joined:${name}:member_added`]);
    const room = a.room(name);
    assert.equal(room.state, 'joined');
    const seen = recorder(room);
    await rest('POST', `/api/v1/rooms/${name}/messages`, { body: 'after' });
    await until(() => seen.seqs.length === 1, 10000, 'a message in the room joined for us');
    assert.deepEqual(seen.seqs, [2]);
    await rest('DELETE', `/api/v1/rooms/${name}/members/${alice}`);
    await until(() => events.length === 2, 10000, 'left');
    assert.equal(events[1], `left:${name}:member_removed`);
    assert.equal(room.state, 'left');
  });

  test('errors: a room one may not join; a send one may not make', async () => {
    const alice = unique('alice');
    const a = client(alice);
    await a.connect();
    const room = a.room(unique('swap:'));
    const errors = [];
    room.on('error', (e) => errors.push(e.code));
    await assert.rejects(room.join(), (error) => error instanceof RealtimeError && error.code === 'forbidden');
    assert.equal(room.state, 'left');
    assert.deepEqual(errors, ['forbidden']);
    await assert.rejects(a.room(`user:${alice}`).send('x'), { code: 'forbidden' });
  });

  test('getToken: the token is refreshed before it expires; the connection stays', async () => {
    const alice = unique('alice');
    let calls = 0;
    const a = client(alice, {
      getToken: async () => {
        calls += 1;
        return token(alice, { ttl: 6 });
      },
    });
    const lost = [];
    a.on('disconnected', (d) => lost.push(d.code));
    await a.connect();
    const firstExpiry = a.expiresAt;
    await until(() => calls >= 2 && a.expiresAt > firstExpiry, 20000, 'a refresh');
    // Past the first token's expiry (the test server allows no leeway): still the same connection.
    await until(() => Date.now() / 1000 > firstExpiry + 1, 20000, 'the first expiry');
    await a.ping();
    assert.deepEqual(lost, []);
    assert.equal(a.state, 'online');
  });

  test('a fixed token that expires closes the client (4010)', async () => {
    const alice = unique('alice');
    const a = client(alice, { token: token(alice, { ttl: 2 }) });
    const closed = new Promise((resolve) => a.once('closed', resolve));
    await a.connect();
    const change = await closed;
    assert.equal(change.code, 4010);
    assert.equal(change.error.code, 'unauthorized');
  });

  test('a bad token: connect() rejects and the client is closed', async () => {
    const a = client('x', { token: 'not-a-jwt' });
    await assert.rejects(a.connect(), { code: 'unauthorized' });
    assert.equal(a.state, 'closed');
  });

  test('sends made before connect() go out once online', async () => {
    const alice = unique('alice');
    const name = await swapRoom(alice);
    const a = client(alice);
    const room = a.room(name);
    const seen = recorder(room);
    room.join();
    const sends = range(1, 5).map((i) => room.send({ i }));
    await sleep(50);
    a.connect();
    const results = await Promise.all(sends);
    assert.deepEqual(results.map((r) => r.seq), range(1, 5));
    await until(() => seen.seqs.length === 5, 10000, 'own messages');
    assert.deepEqual(seen.bodies, range(1, 5).map((i) => ({ i })));
  });

  test('env', () => assert.ok(env.httpUrl.startsWith('http')));
});
