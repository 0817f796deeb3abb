// A scripted server for the protocol cases a real server shows only under load or
// in one particular order: it speaks enough of rt1 (connect, join with recovery,
// history, send with client_id, read, ping) over a real socket (ws), and each test
// can step in before any command is answered.

import { WebSocketServer } from 'ws';

export class ScriptedServer {
  constructor({ recoveryLimit = 200, epoch = 'e1', pingInterval = 25 } = {}) {
    this.recoveryLimit = recoveryLimit;
    this.epoch = epoch;
    this.pingInterval = pingInterval;
    this.rooms = new Map(); // name -> {messages: [{room, seq, user, body, ts, client_id}], byClientId}
    this.connections = [];
    this.commands = []; // every command received, with the connection's index
    /** (conn, command) => true when the test answered it itself. */
    this.intercept = () => false;
  }

  async start() {
    this.wss = new WebSocketServer({ host: '127.0.0.1', port: 0, handleProtocols: (protocols) => [...protocols][0] });
    await new Promise((resolve) => this.wss.once('listening', resolve));
    this.wss.on('connection', (socket) => {
      const conn = new ScriptedConnection(this, socket, this.connections.length);
      this.connections.push(conn);
    });
    this.url = `ws://127.0.0.1:${this.wss.address().port}/ws`;
    return this;
  }

  async stop() {
    for (const conn of this.connections) conn.socket.terminate();
    await new Promise((resolve) => this.wss.close(resolve));
  }

  get live() {
    return this.connections.filter((conn) => conn.socket.readyState === 1);
  }

  room(name) {
    let room = this.rooms.get(name);
    if (!room) this.rooms.set(name, (room = { messages: [], byClientId: new Map() }));
    return room;
  }

  /** The messages of the room the tests use. */
  get messages() {
    return this.room('swap:1').messages;
  }

  /** Stores a message and returns it (not pushed). */
  store(name, body, clientId) {
    const room = this.room(name);
    if (clientId && room.byClientId.has(clientId)) return { message: room.byClientId.get(clientId), duplicate: true };
    const message = { room: name, seq: room.messages.length + 1, user: 'someone', body, ts: Date.now() };
    if (clientId) {
      message.client_id = clientId;
      room.byClientId.set(clientId, message);
    }
    room.messages.push(message);
    return { message, duplicate: false };
  }

  /** Stores a message and pushes it to every joined connection. */
  publish(room, body) {
    const { message } = this.store(room, body);
    for (const conn of this.live) if (conn.rooms.has(room)) conn.push('message', message);
    return message;
  }

  joinResult(room, since, epoch) {
    const { messages } = this.room(room);
    const seq = messages.length;
    const result = { room, seq, epoch: this.epoch, missed: [], recovered: false };
    if (since === undefined || since === null) return result;
    if ((epoch && epoch !== this.epoch) || since > seq) return result;
    result.missed = messages.slice(since, since + this.recoveryLimit);
    result.recovered = since + result.missed.length === seq;
    return result;
  }

  history({ room, before, after, limit = 50 }) {
    const { messages } = this.room(room);
    limit = Math.min(limit, 200);
    let page;
    let more;
    if (after !== undefined) {
      page = messages.slice(after, after + limit);
      more = after + limit < messages.length;
    } else {
      const end = before === undefined ? messages.length : before - 1;
      page = messages.slice(Math.max(0, end - limit), end);
      more = end - limit > 0;
    }
    return { messages: page, more, epoch: this.epoch };
  }
}

class ScriptedConnection {
  constructor(server, socket, index) {
    this.server = server;
    this.socket = socket;
    this.index = index;
    this.rooms = new Set();
    socket.on('message', (data) => {
      for (const line of String(data).split('\n')) if (line) this.handle(JSON.parse(line));
    });
  }

  send(message) {
    if (this.socket.readyState === 1) this.socket.send(JSON.stringify(message));
  }

  push(kind, fields) {
    this.send({ push: kind, ...fields });
  }

  reply(id, ok) {
    if (id !== undefined) this.send({ id, ok });
  }

  error(id, code, message = code) {
    if (id !== undefined) this.send({ id, error: { code, message } });
  }

  handle(command) {
    const server = this.server;
    server.commands.push({ conn: this.index, ...command });
    if (server.intercept(this, command)) return;
    const { id, op } = command;
    switch (op) {
      case 'connect': {
        const rooms = [];
        const asked = command.rooms ?? [];
        if (!asked.some((entry) => entry.room === 'user:u')) rooms.push(server.joinResult('user:u'));
        for (const entry of asked) {
          rooms.push(server.joinResult(entry.room, entry.since, entry.epoch));
          this.rooms.add(entry.room);
        }
        this.reply(id, {
          user: 'u',
          session: `s${this.index}`,
          rooms,
          ping_interval: server.pingInterval,
          expires_at: Math.floor(Date.now() / 1000) + 3600,
        });
        break;
      }
      case 'join':
        this.rooms.add(command.room);
        this.reply(id, server.joinResult(command.room, command.since, command.epoch));
        break;
      case 'history':
        this.reply(id, server.history(command));
        break;
      case 'send': {
        const { message, duplicate } = server.store(command.room, command.body, command.client_id);
        if (!duplicate) for (const conn of server.live) if (conn.rooms.has(command.room)) conn.push('message', message);
        this.reply(id, { room: command.room, seq: message.seq, ts: message.ts, ...(duplicate ? { duplicate } : {}) });
        break;
      }
      case 'notifications':
        this.reply(id, { items: [], unread_count: 0 });
        break;
      default:
        this.reply(id, {});
    }
  }
}
