// The demo page end to end in headless Chromium (Debian's /usr/bin/chromium, driven by
// playwright-core). Run by tests/browser/test_demo.py, which starts the server and
// restarts it when asked: this script prints `CONTROL stop` or `CONTROL start` and
// waits for a line `ok` on its standard input.
//
//   RT_HTTP_URL     http://127.0.0.1:PORT of a server with demo.enabled
//   RT_SERVICE_KEY  a REST service key (seeding history, sending notifications)
//   RT_SCREENSHOTS  the directory for the screenshots
//   RT_CHROMIUM     the browser (default /usr/bin/chromium)
//
// Two users sign in in two browser contexts and chat; typing, presence, read marks,
// scroll-back and the notification bell are checked in the DOM; the server is stopped
// mid-conversation (messages are written while it is down) and started again; both
// pages must end with every stored message exactly once, in seq order.

import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';

import { chromium } from 'playwright-core';

const HTTP = process.env.RT_HTTP_URL;
const KEY = process.env.RT_SERVICE_KEY;
const SHOTS = process.env.RT_SCREENSHOTS;
const ROOM = 'swap:demo';
const SEEDED = 45; // older than the 30 a join shows: scroll-back has a page to load
const AWAY = 8; // stored while alice is away: over the server's recovery limit (3, set by the test)
const WAIT = 60_000; // an outer bound for anything to show (a restart included)
assert.ok(HTTP && KEY && SHOTS, 'needs RT_HTTP_URL, RT_SERVICE_KEY and RT_SCREENSHOTS');
mkdirSync(SHOTS, { recursive: true });

const input = createInterface({ input: process.stdin });
const replies = input[Symbol.asyncIterator]();

async function control(action) {
  console.log(`CONTROL ${action}`);
  const { value, done } = await replies.next();
  assert.ok(!done && value === 'ok', `control ${action} answered ${done ? 'nothing' : value}`);
}

function step(text) {
  console.log(`- ${text}`);
}

async function rest(method, path, body) {
  const response = await fetch(HTTP + path, {
    method,
    headers: { Authorization: `Bearer ${KEY}`, 'Content-Type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  assert.ok(response.ok, `${method} ${path}: ${response.status} ${text}`);
  return text ? JSON.parse(text) : null;
}

/** Every stored message of the room, in seq order, read over REST. */
async function stored() {
  const messages = [];
  for (;;) {
    const after = messages.at(-1)?.seq ?? 0;
    const page = await rest('GET', `/api/v1/rooms/${ROOM}/messages?after=${after}&limit=200`);
    messages.push(...page.messages);
    if (!page.more) return messages;
  }
}

const shots = [];
async function shoot(page, name) {
  const path = join(SHOTS, `${name}.png`);
  await page.screenshot({ path });
  shots.push(path);
  console.log(`screenshot ${path}`);
}

/** The seqs and texts the page lists, in DOM order. */
function listed(page) {
  return page.$$eval('#messages li[data-seq]', (items) =>
    items.map((item) => ({ seq: Number(item.dataset.seq), text: item.querySelector('.text').textContent })),
  );
}

async function waitText(page, selector, text) {
  await page.waitForFunction(
    ([s, t]) => document.querySelector(s)?.textContent.includes(t),
    [selector, text],
    { timeout: WAIT },
  );
}

async function waitState(page, ...states) {
  await page.waitForFunction((wanted) => wanted.includes(document.querySelector('#connection').dataset.state), states, {
    timeout: WAIT,
  });
}

/** Until the page lists a message with this text (sent by anyone). */
async function waitMessage(page, text) {
  await page.waitForFunction(
    (t) => [...document.querySelectorAll('#messages li[data-seq] .text')].some((node) => node.textContent === t),
    text,
    { timeout: WAIT },
  );
}

async function say(page, text) {
  await page.fill('#text', text);
  await page.press('#text', 'Enter');
}

const browser = await chromium.launch({ executablePath: process.env.RT_CHROMIUM || '/usr/bin/chromium' });
const errors = [];
const pages = {};
let holdAlice = false;
try {
  step(`seed ${SEEDED} messages and two notifications for bob`);
  for (let i = 1; i <= SEEDED; i += 1) {
    await rest('POST', `/api/v1/rooms/${ROOM}/messages`, { body: { text: `earlier ${i}` }, user: 'carol' });
  }
  for (const text of ['first', 'second']) {
    await rest('POST', '/api/v1/notifications', { to: ['bob'], type: 'like', data: { text }, actor: 'carol' });
  }

  for (const user of ['alice', 'bob']) {
    const context = await browser.newContext({ viewport: { width: 1100, height: 720 } });
    if (user === 'alice') {
      // Alice's WebSockets go through the browser's route, which passes them on to the
      // server unless the test holds her off (a route only applies to pages made after it).
      await context.routeWebSocket(/\/ws$/, (ws) => {
        if (holdAlice) ws.close({ code: 1013, reason: 'held off by the test' });
        else ws.connectToServer();
      });
    }
    const page = await context.newPage();
    page.on('pageerror', (error) => errors.push(`${user}: ${error.message}`));
    await page.goto(`${HTTP}/demo/`);
    pages[user] = page;
  }
  const { alice, bob } = pages;
  await shoot(alice, '01-sign-in');

  step('a forwarded request may not sign in');
  const forwarded = await browser.newContext({ extraHTTPHeaders: { 'X-Forwarded-For': '203.0.113.9' } });
  const outsider = await forwarded.newPage();
  await outsider.goto(`${HTTP}/demo/`);
  await outsider.fill('#user', 'mallory');
  await outsider.press('#user', 'Enter');
  await waitText(outsider, '#sign-in-error', 'loopback only');
  assert.equal(await outsider.isVisible('#chat'), false);
  await forwarded.close();

  step('both sign in');
  for (const [user, page] of Object.entries(pages)) {
    await page.fill('#user', user);
    await page.press('#user', 'Enter');
  }
  for (const page of [alice, bob]) {
    await waitState(page, 'online');
    await page.waitForSelector('#presence li[data-user="alice"]', { timeout: WAIT });
    await page.waitForSelector('#presence li[data-user="bob"]', { timeout: WAIT });
    await waitMessage(page, `earlier ${SEEDED}`);
  }
  for (const page of [alice, bob]) {
    const seqs = (await listed(page)).map((m) => m.seq);
    assert.deepEqual(seqs, Array.from({ length: 30 }, (_, i) => SEEDED - 29 + i), 'the join shows the last 30');
    assert.equal(await page.isVisible('#older'), true, 'older messages can be loaded');
  }
  await waitText(bob, '#badge', '2');

  step('scroll-back: alice clicks "Load older", bob scrolls to the top');
  // A click without scrolling to the button first (scrolling up loads older ones by itself).
  await alice.dispatchEvent('#older', 'click');
  await bob.evaluate(() => {
    document.getElementById('scroller').scrollTop = 0;
  });
  for (const page of [alice, bob]) {
    await page.waitForFunction(() => document.querySelector('#messages li[data-seq]')?.dataset.seq === '1', null, {
      timeout: WAIT,
    });
    assert.deepEqual(
      (await listed(page)).map((m) => m.seq),
      Array.from({ length: SEEDED }, (_, i) => i + 1),
    );
    assert.equal(await page.isVisible('#older'), false);
    assert.equal(await page.isVisible('#start'), true);
  }

  step('chat, typing, read marks');
  const said = [];
  for (const [page, text] of [
    [alice, 'hi bob'],
    [bob, 'hi alice, how are you?'],
    [alice, 'fine, trying the demo'],
  ]) {
    await say(page, text);
    said.push(text);
    for (const other of [alice, bob]) await waitMessage(other, text);
  }
  await bob.type('#text', 'typing something');
  await waitText(alice, '#typing', 'bob is typing');
  // Bob's page read alice's last message: alice sees it seen, and bob's mark.
  await alice.waitForFunction(
    () => [...document.querySelectorAll('#messages li.mine')].at(-1)?.classList.contains('seen'),
    null,
    { timeout: WAIT },
  );
  await alice.waitForSelector('#reads li[data-user="bob"]', { timeout: WAIT });
  await shoot(alice, '02-chat-alice');
  await shoot(bob, '02-chat-bob');
  await bob.fill('#text', '');
  await bob.press('#text', 'Backspace'); // an input event on the empty field: stopped typing
  await alice.waitForFunction(() => document.querySelector('#typing').textContent === '', null, { timeout: WAIT });

  step('a notification over REST rings bob\'s bell');
  await rest('POST', '/api/v1/notifications', {
    to: ['bob'],
    type: 'like',
    data: { text: 'liked "fine, trying the demo"' },
    actor: 'alice',
  });
  await waitText(bob, '#badge', '3');
  await bob.click('#bell');
  await bob.waitForSelector('#notifications:not([hidden]) li.notification.unread', { timeout: WAIT });
  const ids = await bob.$$eval('#notification-list li', (items) => items.map((item) => Number(item.dataset.id)));
  assert.equal(ids.length, 3);
  assert.deepEqual(ids, [...ids].sort((a, b) => b - a), 'newest first');
  await waitText(bob, '#notification-list li:first-child', 'alice: like');
  await shoot(bob, '03-bell-bob');
  await bob.click('#notification-list li:first-child');
  await waitText(bob, '#badge', '2');
  await bob.waitForSelector('#notification-list li:first-child:not(.unread)', { timeout: WAIT });
  await bob.click('#mark-all');
  await bob.waitForSelector('#badge', { state: 'hidden', timeout: WAIT });
  assert.equal((await rest('GET', '/api/v1/users/bob/notifications?limit=1')).unread_count, 0);
  await bob.click('#text'); // closes the panel

  step('alice pokes bob from the presence list');
  await alice.click('#presence li[data-user="bob"] .poke');
  await waitText(bob, '#badge', '1');

  step('the server stops mid-conversation');
  await say(alice, 'just before the restart'); // maybe answered, maybe not: either way once
  said.push('just before the restart');
  await control('stop');
  for (const page of [alice, bob]) await waitState(page, 'reconnecting');
  for (const [page, text] of [
    [alice, 'sent while the server was down'],
    [bob, 'me too, from bob'],
    [alice, 'and one more'],
  ]) {
    await say(page, text);
    said.push(text);
  }
  await alice.waitForFunction(() => document.querySelectorAll('#pending li').length >= 2, null, { timeout: WAIT });
  await waitText(alice, '#pending', 'waiting for the connection');

  step('it starts again (same port, same database); alice is held off a while');
  // Alice's page may not reconnect yet: what is stored meanwhile is more than the
  // server's recovery limit, so her rejoin must page it from history.
  holdAlice = true;
  await control('start');
  await waitState(bob, 'recovered');
  for (let i = 1; i <= AWAY; i += 1) {
    const text = `while alice was away ${i}`;
    await rest('POST', `/api/v1/rooms/${ROOM}/messages`, { body: { text }, user: 'carol' });
    said.push(text);
  }
  await say(bob, 'alice, are you there?');
  said.push('alice, are you there?');
  await waitMessage(bob, 'alice, are you there?');
  await shoot(alice, '04-offline-alice');
  assert.equal(await alice.getAttribute('#connection', 'data-state'), 'reconnecting');
  holdAlice = false;
  await waitState(alice, 'recovered');
  for (const page of [alice, bob]) {
    for (const text of said) await waitMessage(page, text);
    await page.waitForFunction(() => document.querySelectorAll('#pending li').length === 0, null, { timeout: WAIT });
  }
  const rejoin = await alice.$eval('#log', (log) => log.textContent.match(/rejoined swap:demo: (\d+) missed, (\d+) from history/));
  // More was stored than a join returns (the recovery limit): the rest came from history.
  assert.ok(rejoin && Number(rejoin[2]) > 0, `alice paged her gap from history: ${rejoin?.[0]}`);
  assert.ok(Number(rejoin[1]) + Number(rejoin[2]) >= AWAY, `alice got all she missed: ${rejoin[0]}`);
  await say(bob, 'back again');
  said.push('back again');
  for (const page of [alice, bob]) await waitMessage(page, 'back again');
  await rest('POST', '/api/v1/notifications', { to: ['bob'], type: 'comment', data: { text: 'after the restart' }, actor: 'alice' });
  await waitText(bob, '#badge', '2');

  step('both pages list every stored message once, in seq order');
  const all = await stored();
  assert.deepEqual(
    all.map((m) => m.seq),
    Array.from({ length: all.length }, (_, i) => i + 1),
  );
  for (const text of said) assert.equal(all.filter((m) => m.body.text === text).length, 1, `stored once: ${text}`);
  const expected = all.map((m) => ({ seq: m.seq, text: m.body.text }));
  for (const [user, page] of Object.entries(pages)) {
    assert.deepEqual(await listed(page), expected, `${user}'s page`);
  }
  await waitText(bob, '#log', 'rejoined swap:demo');
  await shoot(alice, '05-recovered-alice');
  await bob.click('#bell');
  await bob.waitForSelector('#notifications:not([hidden])');
  await shoot(bob, '05-recovered-bob');
  for (const [user, page] of Object.entries(pages)) {
    const log = await page.$$eval('#log li', (items) => items.map((item) => item.textContent).reverse());
    console.log(`${user}'s connection log:\n  ${log.join('\n  ')}`);
    await page.waitForFunction(
      () => [...document.querySelectorAll('#presence li')].map((item) => item.dataset.user).join() === 'alice,bob',
      null,
      { timeout: WAIT },
    );
  }
  await bob.setViewportSize({ width: 420, height: 760 });
  await bob.click('#text'); // closes the panel
  await shoot(bob, '06-narrow-bob');
  for (const user of ['alice', 'bob']) {
    assert.ok(await bob.isVisible(`#presence li[data-user="${user}"] .name`), `${user} shown online, narrow`);
  }
  assert.deepEqual(errors, [], 'no uncaught errors in the pages');
  console.log(`DONE ${all.length} messages on both pages; screenshots: ${shots.join(' ')}`);
} catch (error) {
  for (const [user, page] of Object.entries(pages)) {
    await shoot(page, `failed-${user}`).catch(() => {});
  }
  if (errors.length) console.error(`page errors: ${errors.join('; ')}`);
  throw error;
} finally {
  await browser.close();
  input.close();
}
