// Types of realtime.js, the client of the realtime server (protocol rt1, JSON).

export declare const VERSION: string;
export declare const SUBPROTOCOL: 'rt1.json';

export type ConnectionState = 'connecting' | 'online' | 'reconnecting' | 'recovered' | 'closed';
export declare const State: {
  readonly CONNECTING: 'connecting';
  readonly ONLINE: 'online';
  readonly RECONNECTING: 'reconnecting';
  readonly RECOVERED: 'recovered';
  readonly CLOSED: 'closed';
};

export type RoomStateName = 'left' | 'joining' | 'joined';
export declare const RoomState: {
  readonly LEFT: 'left';
  readonly JOINING: 'joining';
  readonly JOINED: 'joined';
};

export declare const CloseCode: {
  readonly NORMAL: 1000;
  readonly GOING_AWAY: 1001;
  readonly ABNORMAL: 1006;
  readonly RESTARTING: 1012;
  readonly BAD_FRAME: 4000;
  readonly UNAUTHORIZED: 4001;
  readonly FORBIDDEN: 4003;
  readonly DISCONNECTED: 4004;
  readonly LIMIT: 4008;
  readonly TOO_SLOW: 4009;
  readonly TOKEN_EXPIRED: 4010;
  readonly TOO_MANY_CONNECTIONS: 4029;
};

/** The server's error codes, and the client's own (`timeout`, `disconnected`, `closed`, `bad_frame`). */
export type ErrorCode =
  | 'bad_request'
  | 'unauthorized'
  | 'forbidden'
  | 'not_found'
  | 'too_large'
  | 'rate_limited'
  | 'unavailable'
  | 'internal'
  | 'timeout'
  | 'disconnected'
  | 'closed'
  | 'bad_frame';

export declare class RealtimeError extends Error {
  constructor(code: ErrorCode | string, message: string);
  readonly code: ErrorCode | string;
}

/** Reconnect advice at the end of a close reason (`…; retry_ms=LOW-HIGH`). */
export declare function parseAdvice(reason: string | undefined): { low: number; high: number } | null;
/** A close reason without its advice. */
export declare function reasonText(reason: string | undefined): string;
/** Full-jitter backoff: uniform in [0, min(max, min * 2^attempt)) milliseconds. */
export declare function backoffDelay(attempt: number, min: number, max: number, random?: () => number): number;

/** What the client needs of a WebSocket: the browser's, Node 22's, or the `ws` package's. */
export interface WebSocketLike {
  readonly readyState: number;
  binaryType: string;
  onopen: ((event: any) => void) | null;
  onmessage: ((event: { data: unknown }) => void) | null;
  onclose: ((event: { code: number; reason: string }) => void) | null;
  onerror: ((event: any) => void) | null;
  send(data: string): void;
  close(code?: number, reason?: string): void;
}
export type WebSocketConstructor = new (url: string, protocols?: string | string[]) => WebSocketLike;

export interface ClientOptions {
  /** A user token (JWT). Without `getToken` it is never refreshed: expiry closes the client. */
  token?: string;
  /** Called for the first token, before expiry (the new one goes out in `refresh`), and after 4001/4010. */
  getToken?: () => string | null | undefined | Promise<string | null | undefined>;
  /** The WebSocket constructor; default `globalThis.WebSocket` (absent on Node 20: pass `ws`'s). */
  WebSocket?: WebSocketConstructor | (new (url: string, protocols?: string | string[]) => WebSocket);
  /** Backoff bounds in ms (full jitter; default 500 and 30000). Server advice overrides them. */
  minReconnectDelay?: number;
  maxReconnectDelay?: number;
  /** Ms to wait for an answer (connect, history, ping, …); default 10000. Sends wait until stored. */
  timeout?: number;
  /** Commands in flight at once (default 50). */
  maxInFlight?: number;
  /** Ms between `typing` commands while the user keeps typing (default 3000). */
  typingInterval?: number;
  /** Fetch the unread count at connect and notifications missed while away (default true). */
  syncNotifications?: boolean;
}

/** A stored room message (`seq` is null in a room without history). */
export interface Message<Body = unknown> {
  room: string;
  seq: number | null;
  user: string | null;
  body: Body;
  ts: number;
  client_id?: string;
}

export interface Notification<Data = unknown> {
  id: number;
  type: string;
  data: Data;
  actor: string | null;
  ts: number;
  read: boolean;
}

export interface StateChange {
  state: ConnectionState;
  previous: ConnectionState;
  /** The close code and reason (without advice) that caused it, when a connection was lost. */
  code?: number;
  reason?: string;
  /** Ms until the next attempt, when reconnecting. */
  delay?: number;
  /** Why the client closed for good (`unauthorized`, `forbidden`, `disconnected`), if it did. */
  error?: RealtimeError | null;
}

export interface Disconnect {
  code: number;
  reason: string;
  /** Whether that connection had been answered (`connect` succeeded). */
  wasReady: boolean;
}

/** How a room caught up after a rejoin (or a gap). */
export interface Recovery {
  room: string;
  /** What the server said: every missed message came with the join. */
  recovered: boolean;
  /** The room's history was reset (new epoch): seqs start over; old messages are void. */
  reset: boolean;
  /** The last seq delivered before, and the room's seq at the join. */
  from: number | null;
  to: number | null;
  /** Messages delivered from the join's `missed`, and from history pages. */
  missed: number;
  filled: number;
  /** Seqs the history no longer had (expired): the only hole the app can see. */
  lost: number;
}

export interface JoinInfo {
  room: string;
  seq: number | null;
  epoch: string | null;
  presence: string[];
}

export interface SendResult {
  room: string;
  seq: number | null;
  ts: number;
  /** The server had stored this client_id before (a resend). */
  duplicate: boolean;
  clientId: string;
}

export interface HistoryPage<Body = unknown> {
  messages: Message<Body>[];
  more: boolean;
  epoch: string;
}

export interface NotificationPage<Data = unknown> {
  items: Notification<Data>[];
  unread_count: number;
}

export interface TypingEvent {
  room: string;
  user: string;
  active: boolean;
}

export interface PresenceEvent {
  room: string;
  /** `sync`: the full list after a (re)join. */
  event: 'join' | 'leave' | 'sync';
  user: string | null;
  users: string[];
}

export interface ReadEvent {
  room: string;
  user: string;
  seq: number;
}

export interface ClientEvents {
  state: StateChange;
  connecting: StateChange;
  online: StateChange;
  reconnecting: StateChange;
  recovered: StateChange;
  closed: StateChange;
  disconnected: Disconnect;
  message: Message;
  notification: Notification;
  unread: number;
  joined: { room: Room; reason: string };
  left: { room: Room; reason: string };
  error: Error;
}

export interface RoomEvents {
  state: { state: RoomStateName; previous: RoomStateName };
  message: Message;
  typing: TypingEvent;
  presence: PresenceEvent;
  read: ReadEvent;
  recovery: Recovery;
  reset: { room: string; epoch: string | null };
  lagged: { room: string; seq: number };
  joined: { room: string; reason: string };
  left: { room: string; reason: string };
  error: Error;
}

declare class Emitter<Events> {
  /** Adds a listener; returns a function that removes it. */
  on<K extends keyof Events>(event: K, listener: (value: Events[K]) => void): () => void;
  once<K extends keyof Events>(event: K, listener: (value: Events[K]) => void): () => void;
  off<K extends keyof Events>(event: K, listener: (value: Events[K]) => void): void;
}

export declare class RealtimeClient extends Emitter<ClientEvents> {
  constructor(url: string, options: ClientOptions);
  readonly url: string;
  readonly state: ConnectionState;
  /** Whether the client is `online` or `recovered`. */
  readonly isOnline: boolean;
  /** Known after the first `connect` answer. */
  readonly user: string | null;
  readonly session: string | null;
  /** The token's expiry (Unix seconds), from the server. */
  readonly expiresAt: number | null;
  readonly notifications: Notifications;
  /** Starts (and keeps) connecting; resolves once online, rejects if closed first. */
  connect(): Promise<void>;
  /** Resolves when online; rejects if the client closes first. */
  ready(): Promise<void>;
  /** Closes and stops reconnecting; pending calls and sends are rejected (`closed`). */
  close(): void;
  /** The room object (created on first use). */
  room(name: string, options?: { since?: number; epoch?: string; token?: string }): Room;
  rooms(): Room[];
  ping(): Promise<void>;
  newClientId(): string;
}

export declare class Room extends Emitter<RoomEvents> {
  readonly client: RealtimeClient;
  readonly name: string;
  readonly state: RoomStateName;
  /** The last seq delivered (keep it with `epoch` to resume later with `client.room(name, {since, epoch})`). */
  readonly seq: number | null;
  readonly epoch: string | null;
  readonly presence: string[];
  readonly typingUsers: Set<string>;
  readonly reads: Map<string, number>;
  /** Joins, and rejoins after every reconnect until `leave()`; `history: N` delivers the last N messages first. */
  join(options?: { history?: number }): Promise<JoinInfo>;
  leave(): Promise<void>;
  /** Resolves once stored; resent with the same client_id after reconnects until then. */
  send<Body = unknown>(body: Body, options?: { clientId?: string; timeout?: number }): Promise<SendResult>;
  history<Body = unknown>(options?: { before?: number; after?: number; limit?: number }): Promise<HistoryPage<Body>>;
  fetchPresence(): Promise<string[]>;
  /** Throttled; returns whether a command was sent. */
  typing(active?: boolean): boolean;
  /** Moves the read mark forward (default: the last seq delivered); resolves with the stored mark. */
  read(seq?: number | null): Promise<number>;
}

export declare class Notifications {
  /** The unread count last known, or null. */
  readonly unread: number | null;
  list<Data = unknown>(options?: { after?: number; limit?: number; unread?: boolean }): Promise<NotificationPage<Data>>;
  unreadCount(): Promise<number>;
  markRead(options: { ids: number[] } | { upTo: number }): Promise<number>;
}
