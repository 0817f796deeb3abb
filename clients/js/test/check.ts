// Type-checked by `tsc --noEmit` (npm test): the declarations describe a usable API.
import {
  RealtimeClient,
  RealtimeError,
  State,
  backoffDelay,
  parseAdvice,
  type ConnectionState,
  type Message,
  type Recovery,
} from '../realtime.js';

interface Chat {
  text: string;
}

export async function chat(url: string): Promise<number> {
  const client = new RealtimeClient(url, {
    getToken: async () => 'token',
    WebSocket,
    minReconnectDelay: 100,
    maxReconnectDelay: 5000,
  });
  const states: ConnectionState[] = [];
  const off = client.on('state', ({ state, previous, delay }) => {
    states.push(state, previous);
    if (delay !== undefined) console.log(delay.toFixed(0));
  });
  client.on('notification', (n) => console.log(n.id, n.type, n.actor, n.read));
  client.on('unread', (count: number) => console.log(count));
  client.on('joined', ({ room, reason }) => console.log(room.name, reason));
  await client.connect();
  if (client.state === State.ONLINE || client.isOnline) off();

  const room = client.room('swap:1', { since: 3, epoch: 'e' });
  room.on('message', (m: Message) => console.log(m.seq ?? 0, m.user, m.body));
  room.on('recovery', (r: Recovery) => console.log(r.recovered, r.missed + r.filled, r.lost, r.reset));
  room.on('typing', ({ user, active }) => console.log(user, active));
  room.on('presence', ({ event, users }) => console.log(event, users.length));
  room.on('read', ({ user, seq }) => console.log(user, seq));
  const joined = await room.join({ history: 10 });
  console.log(joined.presence, room.presence, room.typingUsers.size, room.reads.get('bob'));

  const sent = await room.send<Chat>({ text: 'hi' }, { clientId: client.newClientId() });
  const page = await room.history<Chat>({ before: sent.seq ?? 1, limit: 20 });
  for (const m of page.messages) console.log(m.body.text);
  const typed: boolean = room.typing();
  const mark: number = await room.read(sent.seq);
  console.log(typed, mark, await room.fetchPresence());

  const list = await client.notifications.list<{ post: number }>({ unread: true, limit: 5 });
  console.log(list.items[0]?.data.post, list.unread_count, client.notifications.unread);
  await client.notifications.markRead({ upTo: list.items.at(-1)?.id ?? 0 });
  const unread: number = await client.notifications.markRead({ ids: [1, 2] });
  console.log(unread + (await client.notifications.unreadCount()));

  const advice = parseAdvice('server restarting: reconnect; retry_ms=500-1500');
  console.log(advice?.low, backoffDelay(3, 500, 30000));
  try {
    await room.leave();
  } catch (error) {
    if (error instanceof RealtimeError) console.log(error.code);
  }
  client.close();
  return states.length;
}
