// A terminal chat: REALTIME_TOKEN=<a user token> node examples/chat.js swap:1
import { createInterface } from 'node:readline';
import { RealtimeClient } from 'realtime-client';

const client = new RealtimeClient(process.env.REALTIME_URL ?? 'ws://localhost:8080/ws', {
  token: process.env.REALTIME_TOKEN, // or getToken: () => fetch('/token').then((r) => r.text())
  WebSocket: globalThis.WebSocket ?? (await import('ws')).default, // Node 20 has none of its own
});
client.on('state', ({ state }) => console.log(`[${state}]`));
client.on('notification', (n) => console.log(`[${n.type} from ${n.actor}]`));

const room = client.room(process.argv[2] ?? 'swap:1');
room.on('message', (m) => {
  console.log(`#${m.seq} ${m.user}: ${m.body.text}`);
  room.read(m.seq); // read marks: folded while one is on its way
});
room.on('typing', ({ user, active }) => active && console.log(`(${user} is typing)`));
room.on('presence', ({ event, user }) => event !== 'sync' && console.log(`(${user} ${event}s)`));
room.on('recovery', (r) => console.log(`(back: ${r.missed + r.filled} missed messages delivered)`));

client.connect();
await room.join({ history: 10 }); // the last 10 messages first, then live ones, in seq order

const input = createInterface({ input: process.stdin });
input.on('line', (text) => text && room.send({ text })); // resent across reconnects, stored once
input.on('close', async () => {
  await room.send({ text: 'bye' }); // resolves once stored
  client.close();
});
