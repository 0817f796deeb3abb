// The README's "chat in 30 lines" works as written: README.md shows
// examples/chat.js verbatim, and this runs that file against a real server.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { after, test } from 'node:test';
import { fileURLToPath } from 'node:url';

import { client, closeAll, env, range, rest, skipReason, token, unique, until } from './support.js';

const here = (path) => fileURLToPath(new URL(path, import.meta.url));
const example = readFileSync(here('../examples/chat.js'), 'utf8');

after(closeAll);

test('README.md shows examples/chat.js verbatim, in at most 30 lines', () => {
  const readme = readFileSync(here('../README.md'), 'utf8');
  assert.ok(readme.includes('```js\n' + example + '```\n'), 'the README block differs from examples/chat.js');
  assert.ok(example.trimEnd().split('\n').length <= 30);
});

test('examples/chat.js: history, live messages, typing, presence, notifications, sending', { skip: skipReason ?? false, timeout: 120000 }, async () => {
  const [alice, bob] = [unique('alice'), unique('bob')];
  const name = unique('swap:');
  for (const user of [alice, bob]) await rest('PUT', `/api/v1/rooms/${name}/members/${user}`);
  for (const i of range(1, 12)) await rest('POST', `/api/v1/rooms/${name}/messages`, { body: { text: `old ${i}` }, user: bob });

  const chat = spawn(process.execPath, [here('../examples/chat.js'), name], {
    env: { ...process.env, REALTIME_URL: env.wsUrl, REALTIME_TOKEN: token(alice) },
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  let out = '';
  let err = '';
  chat.stdout.on('data', (data) => (out += data));
  chat.stderr.on('data', (data) => (err += data));
  const exited = new Promise((resolve) => chat.on('exit', resolve));
  const shows = (text) => until(() => out.includes(text), 20000, `${JSON.stringify(text)} in:\n${out}\n${err}`);
  try {
    await shows('[online]');
    await shows(`#12 ${bob}: old 12`);
    assert.ok(!out.includes('#2 '), 'only the last 10');
    assert.ok(out.indexOf(`#3 ${bob}: old 3`) < out.indexOf(`#12 ${bob}: old 12`));

    const b = client(bob);
    await b.connect();
    const room = b.room(name);
    const heard = [];
    room.on('message', (m) => heard.push(`${m.user}: ${m.body.text}`));
    await room.join();
    await shows(`(${bob} joins)`);
    room.typing();
    await shows(`(${bob} is typing)`);
    await room.send({ text: 'hi alice' });
    await shows(`#13 ${bob}: hi alice`);
    await until(() => room.reads.get(alice) === 13, 20000, "alice's read mark");

    await rest('POST', '/api/v1/notifications', { to: [alice], type: 'like', data: {}, actor: 'carol' });
    await shows('[like from carol]');

    chat.stdin.write('hello bob\n');
    await until(() => heard.includes(`${alice}: hello bob`), 20000, "alice's message");
    chat.stdin.end();
    assert.equal(await exited, 0, err);
    await until(() => heard.length === 3, 20000, "alice's goodbye");
    assert.deepEqual(heard, [`${bob}: hi alice`, `${alice}: hello bob`, `${alice}: bye`]);
  } finally {
    chat.kill();
  }
});
