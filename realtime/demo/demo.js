// The demo page: one chat room and a notification bell, on realtime.js (served beside
// this file, exactly as clients/js/realtime.js). Signing in asks this server for a token
// (POST token), which only a server in demo mode, reached over loopback, answers.

import { RealtimeClient, State } from './realtime.js';

const PAGE = 30; // messages shown at the join, and per page of scroll-back
const LOG_LINES = 60;
const $ = (id) => document.getElementById(id);

/** What the signed-in page holds; null when signed out. */
let session = null;

// Small helpers -----------------------------------------------------------------------

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function clock(ts) {
  return new Date(ts).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', second: '2-digit' });
}

function textOf(body) {
  if (body && typeof body.text === 'string') return body.text;
  return JSON.stringify(body);
}

function log(text) {
  const list = $('log');
  const line = element('li', null);
  line.append(element('time', null, clock(Date.now())), ` ${text}`);
  list.prepend(line);
  while (list.children.length > LOG_LINES) list.lastElementChild.remove();
}

function websocketUrl() {
  const url = new URL('/ws', location.href);
  url.protocol = location.protocol === 'https:' ? 'wss:' : 'ws:';
  return url.href;
}

async function requestToken(user) {
  const response = await fetch('token', {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ user }),
  });
  const answer = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(answer.error?.message ?? `sign-in failed (HTTP ${response.status})`);
  return answer; // {user, token, expires_at, room}
}

// Signing in and out --------------------------------------------------------------------

async function signIn(name) {
  $('sign-in-error').hidden = true;
  let first;
  try {
    first = await requestToken(name);
  } catch (error) {
    showSignInError(error.message);
    return;
  }
  sessionStorage.setItem('realtime-demo-user', first.user);
  let unused = first.token; // the first connect's; later ones (refresh, 4001) ask again
  const client = new RealtimeClient(websocketUrl(), {
    getToken: async () => {
      if (unused) {
        const token = unused;
        unused = null;
        return token;
      }
      const next = await requestToken(first.user);
      session.token = next.token;
      return next.token;
    },
  });
  const room = client.room(first.room);
  session = {
    user: first.user,
    token: first.token,
    client,
    room,
    firstSeq: null, // the oldest seq on the page
    hasOlder: false,
    loadingOlder: false,
    pending: new Map(), // client_id -> its list item, until the message is back
    notifications: new Map(), // id -> {item, node}
  };
  showChat();
  wireClient(client);
  wireRoom(room);
  client.connect().catch(() => {}); // the state event tells
  try {
    await room.join({ history: PAGE });
  } catch (error) {
    log(`could not join ${room.name}: ${error.message}`);
    return;
  }
  session.hasOlder = session.firstSeq !== null && session.firstSeq > 1;
  updateOlder();
  markRead();
  loadNotifications();
}

function signOut() {
  if (!session) return;
  session.client.close();
  session = null;
  sessionStorage.removeItem('realtime-demo-user');
  for (const id of ['messages', 'pending', 'presence', 'reads', 'log', 'notification-list']) $(id).replaceChildren();
  $('typing').textContent = '';
  $('chat').hidden = true;
  $('me').hidden = true;
  $('sign-in').hidden = false;
  $('bell').disabled = true;
  closePanel();
  showBadge(0);
  $('no-notifications').hidden = false;
  showConnection({ state: State.CLOSED });
  $('user').focus();
}

function showSignInError(text) {
  $('sign-in-error').textContent = text;
  $('sign-in-error').hidden = false;
}

function showChat() {
  $('sign-in').hidden = true;
  $('chat').hidden = false;
  $('me').hidden = false;
  $('me-name').textContent = session.user;
  $('room-name').textContent = session.room.name;
  $('bell').disabled = false;
  $('start').hidden = true;
  $('older').hidden = true;
  $('text').focus();
}

// The connection ----------------------------------------------------------------------

const STATE_TEXT = {
  connecting: 'connecting…',
  online: 'online',
  reconnecting: 'reconnecting…',
  recovered: 'recovered',
  closed: 'offline',
};

function showConnection({ state, delay }) {
  $('connection').dataset.state = state;
  $('chat').dataset.online = String(state === State.ONLINE || state === State.RECOVERED);
  let text = session ? STATE_TEXT[state] : 'signed out';
  if (state === State.RECONNECTING && delay !== undefined) text = `reconnecting in ${(delay / 1000).toFixed(1)} s…`;
  $('connection-text').textContent = text;
  for (const node of session?.pending.values() ?? []) showPendingState(node);
}

function wireClient(client) {
  client.on('state', (change) => {
    if (client !== session?.client) return;
    showConnection(change);
    if (change.state === State.RECONNECTING && change.delay !== undefined) {
      log(`reconnecting in ${Math.round(change.delay)} ms`);
    }
    if (change.state === State.ONLINE || change.state === State.RECOVERED) log(change.state);
    if (change.state === State.CLOSED && change.error) log(`closed: ${change.error.message}`);
  });
  client.on('disconnected', ({ code, reason }) => log(`connection lost (${code}${reason ? ` ${reason}` : ''})`));
  client.on('error', (error) => log(`error: ${error.message}`));
  client.on('notification', (item) => {
    if (client === session?.client) addNotification(item);
  });
  client.on('unread', (count) => {
    if (client === session?.client) showBadge(count);
  });
}

// The room ----------------------------------------------------------------------------

function wireRoom(room) {
  // After a sign-out the old room still reports its end: only the current one is shown.
  const on = (event, listener) =>
    room.on(event, (value) => {
      if (room === session?.room) listener(value);
    });
  on('state', ({ state }) => {
    $('room-state').textContent = state === 'joined' ? '' : state;
  });
  on('message', (message) => {
    appendMessage(message);
    markRead();
  });
  on('reset', () => {
    // The room's history was replaced: what is on the page is void.
    $('messages').replaceChildren();
    session.firstSeq = null;
    log('the room history was reset');
  });
  on('recovery', (r) => {
    const parts = [`${r.missed} missed`, `${r.filled} from history`];
    if (r.lost) parts.push(`${r.lost} expired`);
    log(`rejoined ${room.name}: ${parts.join(', ')}`);
  });
  on('typing', () => showTyping(room));
  on('presence', ({ event, user }) => {
    if (event !== 'sync' && user !== session.user) log(`${user} ${event === 'join' ? 'came online' : 'went offline'}`);
    showPresence(room);
  });
  on('read', () => showReads(room));
  on('lagged', () => log('the server paused this room for a slow reader; catching up'));
  on('error', (error) => log(`room error: ${error.message}`));
}

function messageNode(message) {
  const mine = message.user === session.user;
  const node = element('li', `message${mine ? ' mine' : ''}${message.user === null ? ' system' : ''}`);
  node.dataset.seq = String(message.seq);
  node.dataset.user = message.user ?? '';
  if (message.client_id) node.dataset.clientId = message.client_id;
  const head = element('div', 'head');
  head.append(element('span', 'author', message.user ?? 'system'), element('time', null, clock(message.ts)));
  const foot = element('div', 'foot');
  foot.append(element('span', 'seq', `#${message.seq}`));
  if (mine) foot.append(element('span', 'ticks', '✓'));
  node.append(head, element('div', 'text', textOf(message.body)), foot);
  if (mine) showTicks(node);
  return node;
}

function nearBottom(scroller) {
  return scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight < 80;
}

function appendMessage(message) {
  const scroller = $('scroller');
  const follow = nearBottom(scroller) || message.user === session.user;
  // Each seq comes once, in order (the client sees to it): the page appends, nothing more.
  $('messages').append(messageNode(message));
  if (session.firstSeq === null) {
    session.firstSeq = message.seq;
    updateOlder();
  }
  const pending = message.client_id && session.pending.get(message.client_id);
  if (pending) {
    pending.remove();
    session.pending.delete(message.client_id);
  }
  if (follow) scroller.scrollTop = scroller.scrollHeight;
}

async function loadOlder() {
  if (!session || session.loadingOlder || !session.hasOlder) return;
  const { room } = session;
  session.loadingOlder = true;
  updateOlder();
  try {
    const page = await room.history({ before: session.firstSeq, limit: PAGE });
    if (room !== session?.room) return;
    const scroller = $('scroller');
    const height = scroller.scrollHeight;
    const older = page.messages.filter((m) => m.seq < session.firstSeq);
    $('messages').prepend(...older.map(messageNode));
    if (older.length) session.firstSeq = older[0].seq;
    session.hasOlder = page.more && session.firstSeq > 1;
    scroller.scrollTop += scroller.scrollHeight - height; // keep what was in view in place
  } catch (error) {
    log(`history: ${error.message}`);
  } finally {
    if (session) {
      session.loadingOlder = false;
      updateOlder();
    }
  }
}

function updateOlder() {
  $('older').hidden = !session.hasOlder;
  $('older').disabled = session.loadingOlder;
  $('older').textContent = session.loadingOlder ? 'Loading…' : 'Load older messages';
  $('start').hidden = session.hasOlder || session.firstSeq === null;
}

function markRead() {
  if (!session || document.visibilityState !== 'visible' || session.room.seq === null) return;
  session.room.read().catch(() => {}); // folded by the client; a refusal is not worth a word
}

function showTyping(room) {
  const users = [...room.typingUsers].filter((user) => user !== session?.user);
  let text = '';
  if (users.length === 1) text = `${users[0]} is typing…`;
  else if (users.length === 2) text = `${users[0]} and ${users[1]} are typing…`;
  else if (users.length > 2) text = `${users.length} people are typing…`;
  $('typing').textContent = text;
}

function showPresence(room) {
  const list = $('presence');
  list.replaceChildren();
  for (const user of [...room.presence].sort()) {
    const item = element('li', user === session.user ? 'self' : null);
    item.dataset.user = user;
    item.append(element('span', 'online-dot'), element('span', 'name', user === session.user ? `${user} (you)` : user));
    if (user !== session.user) {
      const poke = element('button', 'quiet poke', 'Poke');
      poke.type = 'button';
      poke.title = `Send ${user} a notification`;
      poke.addEventListener('click', () => sendPoke(user));
      item.append(poke);
    }
    list.append(item);
  }
}

function showReads(room) {
  const list = $('reads');
  list.replaceChildren();
  for (const [user, seq] of [...room.reads].sort()) {
    const item = element('li', null);
    item.dataset.user = user;
    item.append(element('span', 'name', user === session.user ? `${user} (you)` : user), element('span', 'seq', `#${seq}`));
    list.append(item);
  }
  for (const node of $('messages').querySelectorAll('li.mine')) showTicks(node);
}

function showTicks(node) {
  const seq = Number(node.dataset.seq);
  const readers = [...session.room.reads].filter(([user, mark]) => user !== session.user && mark >= seq);
  const ticks = node.querySelector('.ticks');
  ticks.textContent = readers.length ? '✓✓ seen' : '✓';
  ticks.title = readers.length ? `seen by ${readers.map(([user]) => user).join(', ')}` : 'stored';
  node.classList.toggle('seen', readers.length > 0);
}

function send(text) {
  const { client, room } = session;
  const clientId = client.newClientId();
  const node = element('li', 'message mine pending');
  node.dataset.clientId = clientId;
  node.append(element('div', 'text', text), element('div', 'foot'));
  session.pending.set(clientId, node);
  showPendingState(node);
  $('pending').append(node);
  $('scroller').scrollTop = $('scroller').scrollHeight;
  room.send({ text }, { clientId }).catch((error) => {
    node.classList.add('failed');
    node.querySelector('.foot').textContent = `not sent: ${error.message}`;
    session?.pending.delete(clientId);
  });
}

function showPendingState(node) {
  if (node.classList.contains('failed')) return;
  node.querySelector('.foot').textContent = session.client.isOnline ? 'sending…' : 'waiting for the connection…';
}

// Notifications ----------------------------------------------------------------------

async function loadNotifications() {
  const { client } = session;
  try {
    const page = await client.notifications.list({ limit: 20 });
    if (client !== session?.client) return;
    for (const item of page.items) addNotification(item);
    showBadge(page.unread_count);
  } catch (error) {
    log(`notifications: ${error.message}`);
  }
}

function notificationText(item) {
  const who = item.actor ?? 'the system';
  if (item.type === 'poke') return `${who} poked you${item.data?.text ? `: ${item.data.text}` : ''}`;
  const detail = item.data && typeof item.data === 'object' ? item.data.text ?? JSON.stringify(item.data) : item.data;
  return `${who}: ${item.type}${detail !== undefined && detail !== null ? ` (${detail})` : ''}`;
}

function addNotification(item) {
  // The list and live pushes overlap at sign-in: each id is shown once.
  if (session.notifications.has(item.id)) return;
  const node = element('li', item.read ? 'notification' : 'notification unread');
  node.dataset.id = String(item.id);
  node.tabIndex = 0;
  node.append(element('span', 'what', notificationText(item)), element('time', null, clock(item.ts)));
  node.addEventListener('click', () => readNotifications({ ids: [item.id] }));
  node.addEventListener('keydown', (event) => {
    if (event.key === 'Enter' || event.key === ' ') readNotifications({ ids: [item.id] });
  });
  session.notifications.set(item.id, { item, node });
  // Newest first.
  const list = $('notification-list');
  const after = [...list.children].find((other) => Number(other.dataset.id) < item.id);
  list.insertBefore(node, after ?? null);
  $('no-notifications').hidden = true;
}

async function readNotifications(which) {
  const { client } = session;
  try {
    await client.notifications.markRead(which);
  } catch (error) {
    log(`mark read: ${error.message}`);
    return;
  }
  for (const [id, { item, node }] of session?.notifications ?? []) {
    if (which.ids ? which.ids.includes(id) : id <= which.upTo) {
      item.read = true;
      node.classList.remove('unread');
    }
  }
}

function showBadge(count) {
  const badge = $('badge');
  badge.textContent = count > 99 ? '99+' : String(count);
  badge.hidden = !count;
  $('bell').setAttribute('aria-label', `Notifications (${count} unread)`);
}

function togglePanel() {
  const open = $('notifications').hidden;
  $('notifications').hidden = !open;
  $('bell').setAttribute('aria-expanded', String(open));
}

function closePanel() {
  $('notifications').hidden = true;
  $('bell').setAttribute('aria-expanded', 'false');
}

async function sendPoke(user) {
  try {
    const response = await fetch('poke', {
      method: 'POST',
      headers: { 'Content-Type': 'application/json', Authorization: `Bearer ${session.token}` },
      body: JSON.stringify({ to: user, text: `hello from ${session.room.name}` }),
    });
    if (!response.ok) throw new Error((await response.json().catch(() => ({}))).error?.message ?? `HTTP ${response.status}`);
    log(`poked ${user}`);
  } catch (error) {
    log(`poke: ${error.message}`);
  }
}

// Wiring ------------------------------------------------------------------------------

$('sign-in-form').addEventListener('submit', (event) => {
  event.preventDefault();
  const name = $('user').value.trim();
  if (name) signIn(name);
});
$('sign-out').addEventListener('click', signOut);
$('composer').addEventListener('submit', (event) => {
  event.preventDefault();
  const text = $('text').value.trim();
  if (!text || !session) return;
  $('text').value = '';
  send(text);
});
$('text').addEventListener('input', () => {
  if (session) session.room.typing($('text').value !== ''); // throttled by the client
});
$('older').addEventListener('click', loadOlder);
$('scroller').addEventListener('scroll', () => {
  if ($('scroller').scrollTop < 40) loadOlder();
});
$('bell').addEventListener('click', (event) => {
  event.stopPropagation();
  togglePanel();
});
$('mark-all').addEventListener('click', () => {
  const ids = [...(session?.notifications.keys() ?? [])];
  if (ids.length) readNotifications({ upTo: Math.max(...ids) });
});
document.addEventListener('click', (event) => {
  if (!$('notifications').hidden && !event.target.closest('.bell-wrap')) closePanel();
});
document.addEventListener('visibilitychange', markRead);

const remembered = sessionStorage.getItem('realtime-demo-user');
if (remembered) {
  $('user').value = remembered;
  signIn(remembered);
}
