"""Socket.IO on Engine.IO: one client's session, over HTTP long-polling or WebSocket.

An ``EngineSocket`` is a peer of the native machinery, not a second server: it
owns a ``Connection`` (whose encoding is ``protocol.socketio.SocketIOCodec``, so
rooms encode each push once for all Socket.IO connections of a transport) and a
``Session`` (auth, rate limit, every op). It turns Engine.IO and Socket.IO
packets into commands, and the CONNECT packet into ``connect``.

Transports (the Engine.IO rules):

- polling: the connection writes into a ``PollingSink``; a GET takes what is
  there, waiting at most ``ping_interval`` for something; a POST carries packets
  in. One GET and one POST at a time: an overlapping one closes the session.
- websocket: the connection writes frames to the socket (``websocket.py``).
- upgrade: a WebSocket with the polling session's id answers ``2probe`` with
  ``3probe``, the waiting GET gets a noop, and ``5`` moves the connection (and
  whatever it had queued) to the WebSocket (``Connection.rebind``).

Polling requests that reached another instance come here through the relay
(``sio_relay.py``: ``poll``, ``post``, ``probed``); an upgrade that reached
another instance takes the session there (``take``, then ``taken``; see
``sio_move.py``).

Closing with a native close code: the client first gets the event ``closing``
with ``{code, reason}``; then, unless the close invites a reconnect (1001, 1011,
1012), the DISCONNECT packet, after which socket.io-client does not reconnect by
itself ("io server disconnect"). Recovery offsets: see ``_tail`` and docs/socketio.md.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Sequence
from typing import Final

import orjson

from protocol import CloseCode, CommandError, FrameError
from protocol.commands import Command, Connect, Rejected, RoomRequest
from protocol.engineio import (
    SEPARATOR,
    EngineIOError,
    Packet,
    PacketType,
    RequestError,
    decode_packet,
    decode_payload,
    encode_packet,
    error_body,
    open_packet,
)
from protocol.outgoing import JoinResult, MessagePush
from protocol.socketio import (
    MAIN,
    SIO_POLLING,
    SIO_WEBSOCKET,
    Decoder,
    SocketIOCodec,
    SocketIOError,
    connect_error,
    connected,
    decode_offset,
    encode_offset,
    event_command,
)
from protocol.socketio import Packet as SioPacket
from protocol.socketio import PacketType as SioType

from .clients import TooManyConnections
from .connection import Connection, Sink
from .frames import data_frame, encode_frame, text_frame
from .logs import bind, bound
from .node import Node
from .session import Session, bearer
from .sio_polling import PollingSink
from .sio_state import MovedSession, pack_moved
from .websocket import WebSocket

log = logging.getLogger(__name__)

RECONNECTING: Final = frozenset(
    {CloseCode.GOING_AWAY, CloseCode.INTERNAL_ERROR, CloseCode.RESTARTING}
)
"""Closes after which the client should come back by itself: no DISCONNECT packet."""
MAX_PID: Final = 64
Commands = list[tuple[float, Command | Rejected]]


class EngineSocket:
    """One Engine.IO session and Socket.IO's main namespace on it."""

    def __init__(
        self,
        node: Node,
        sid: str,
        sink: Sink,
        codec: SocketIOCodec,
        authorization: str | None,
    ) -> None:
        self._node = node
        self.sid = sid
        self._authorization = authorization
        server = node.settings.server
        self.conn = Connection(
            secrets.token_hex(8),
            sink,
            codec,
            server.send_buffer_bytes,
            self._closing,
            node.hub.outbox,
            server.send_buffer_soft_bytes or server.send_buffer_bytes // 2,
        )
        self.conn.tail = self._tail
        self.session = Session(node, self.conn)
        self.polling = sink if isinstance(sink, PollingSink) else None
        self.ws: WebSocket | None = None
        self.connected = False
        self._decoder = Decoder()
        self._lock = asyncio.Lock()
        self._client_closed = False
        self._close_code: int = CloseCode.NORMAL
        self._positions: dict[str, int] = {}
        # A replay of missed messages is under way: the offset goes at its end even
        # when the positions it names were known before.
        self._offset_due = False
        self._history: dict[str, bool] = {}
        self._end_timer: asyncio.TimerHandle | None = None
        self._ended = False
        self._closed = False
        self._moved = False
        self._relayed_poll: PollingSink | None = None
        self._last_poll: tuple[str | None, bytes] = (None, b"")
        node.hub.add_connection(self.conn)

    @property
    def authenticated(self) -> bool:
        return self.conn.authenticated

    def open_frame(self) -> bytes:
        """Engine.IO's open packet, in this socket's framing."""
        server = self._node.settings.server
        packet = open_packet(
            self.sid,
            upgrades=["websocket"] if self.polling is not None else [],
            ping_interval=server.ping_interval,
            # The client gives up after pingInterval + pingTimeout without a ping:
            # our ping_timeout in all, as for native clients.
            ping_timeout=server.ping_timeout - server.ping_interval,
            max_payload=server.max_frame_bytes,
        )
        text = encode_packet(packet)
        assert isinstance(text, str)
        return self._frame(text)

    def _frame(self, text: str) -> bytes:
        return data_frame(self.conn.codec, text.encode())

    # Input ------------------------------------------------------------------------------

    async def handle_frames(self, frames: Sequence[tuple[float, bytes | str]]) -> None:
        """WebSocket messages (text as ``str``), each an Engine.IO packet."""
        packets: list[tuple[float, Packet]] = []
        bad: FrameError | None = None
        for arrived, data in frames:
            try:
                packets.append((arrived, decode_packet(data)))
            except FrameError as error:
                bad = error
                break
        await self.handle_packets(packets, bad)

    async def handle_packets(
        self, packets: Sequence[tuple[float, Packet]], bad: FrameError | None = None
    ) -> None:
        """Carry out what the packets ask, in order; ``bad``: what followed was garbage."""
        async with self._lock:
            commands: Commands = []
            for arrived, packet in packets:
                if self.conn.closing:
                    return
                try:
                    sio = self._engine_packet(packet)
                    if sio is None:
                        continue
                    if sio.namespace != MAIN:
                        if sio.type is SioType.CONNECT:
                            error = connect_error("Invalid namespace", namespace=sio.namespace)
                            self.conn.reply_frame(self._frame("4" + error))
                        continue  # a namespace it never joined: ignored, as socket.io does
                    if sio.type is SioType.CONNECT:
                        await self._run(commands)
                        commands = []
                        await self._connect(arrived, sio)
                    elif sio.type is SioType.DISCONNECT:
                        await self._run(commands)
                        self._client_closed = True
                        self.conn.close(CloseCode.NORMAL, "the client disconnected")
                        return
                    elif sio.type in (SioType.EVENT, SioType.BINARY_EVENT):
                        commands.append((arrived, event_command(sio)))
                    elif sio.type is SioType.CONNECT_ERROR:
                        raise SocketIOError("CONNECT_ERROR is the server's to send")
                    # Acks from the client: the server never asks for one.
                except FrameError as error:
                    bad = error
                    break
            await self._run(commands, bad)

    async def _run(self, commands: Commands, bad: FrameError | None = None) -> None:
        if commands or bad is not None:
            await self.session.handle_commands(commands, bad)

    def _engine_packet(self, packet: Packet) -> SioPacket | None:
        match packet.type:
            case PacketType.MESSAGE:
                if isinstance(packet.data, bytes):
                    return self._decoder.binary(packet.data)
                return self._decoder.text(packet.data)
            case PacketType.PONG | PacketType.NOOP:
                return None
            case PacketType.PING:
                data = packet.data if isinstance(packet.data, str) else ""
                self.conn.send_frame(self._frame(f"3{data}"))
                return None
            case PacketType.CLOSE:
                self._client_closed = True
                self.conn.close(CloseCode.NORMAL, "the client closed the session")
                return None
            case _:
                raise EngineIOError(f"unexpected Engine.IO {packet.type.name} packet")

    # CONNECT ----------------------------------------------------------------------------

    async def _connect(self, arrived: float, packet: SioPacket) -> None:
        if self.connected:
            return  # the main namespace is connected already: nothing changes
        auth = packet.data if isinstance(packet.data, dict) else {}
        token = auth.get("token")
        if not isinstance(token, str) or not token:
            token = bearer(self._authorization)
        pid, positions = _recovery(auth)
        requests = tuple(RoomRequest(room, since=seq) for room, seq in positions.items())
        conn = self.conn
        conn.hold()  # the CONNECT answer (and what recovery replays) before any push
        try:
            try:
                result = await self.session.connect(arrived, Connect(None, token, requests))
            except CommandError as error:
                conn.reply_frame(self._frame("4" + connect_error(error.message, error.code)))
                if isinstance(error, TooManyConnections):
                    conn.close(CloseCode.TOO_MANY_CONNECTIONS, error.message)
                elif not conn.authenticated:
                    conn.close(CloseCode.UNAUTHORIZED, error.message)
                return
            joined = [r for r in result.rooms if isinstance(r, JoinResult)]
            recovered = (
                pid is not None
                and bool(positions)
                and all(r.recovered for r in joined if r.room in positions)
                and len([r for r in joined if r.room in positions]) == len(positions)
            )
            if not recovered:
                pid = secrets.token_urlsafe(12)
            self.connected = True
            self._offset_due = True
            conn.reply_frame(self._frame("4" + connected(result.session, pid)))
            for room in joined:
                if self._keeps_history(room.room):
                    self._positions[room.room] = room.seq
                if recovered:
                    for message in room.missed:
                        conn.reply_frame(encode_frame(conn.codec, MessagePush(message)))
        finally:
            conn.release()

    def _keeps_history(self, room: str) -> bool:
        keeps = self._history.get(room)
        if keeps is None:
            _, namespace = self._node.policy.resolve(room)
            keeps = self._history[room] = namespace.history
        return keeps

    def _tail(self) -> bytes | None:
        """The recovery offset, after a write that moved this connection on.

        Where it stands in each room: the room's last seq when the connection is in
        its fan-out (every message up to it is in this very write or an earlier
        one), else what it last had. Sent as the event ``offset`` whose argument
        socket.io-client keeps and hands back in its next CONNECT.
        """
        if not self.connected or self.conn.holding:
            return None
        positions = self._standing()
        if positions == self._positions and not (self._offset_due and positions):
            return None
        self._offset_due = False
        self._positions = positions
        return self._frame("42" + orjson.dumps(["offset", encode_offset(positions)]).decode())

    def _standing(self) -> dict[str, int]:
        """Where the connection stands in each room with history it is in."""
        conn = self.conn
        rooms = self._node.hub.rooms
        old = self._positions
        positions: dict[str, int] = {}
        for name in conn.rooms:
            if not self._keeps_history(name):
                continue
            room = rooms.get(name)
            if (
                room is not None
                and room.seq is not None
                and conn in room.by_codec.get(conn.codec, ())
            ):
                positions[name] = room.seq
            elif name in old:
                positions[name] = old[name]
        return positions

    def resume(self, connected: bool, positions: dict[str, int]) -> None:
        """A moved session rebuilt here (``sio_move.py``) goes on where it stood."""
        self.connected = connected
        self._positions = positions
        self._offset_due = True

    # Output and closing -----------------------------------------------------------------

    def _closing(self, code: int, reason: str) -> None:
        """The connection closes (``Connection.close``): say why, then end the transport."""
        self._close_code = code
        final: list[str] = []
        if self.connected and not self._client_closed:
            final.append(
                "42" + orjson.dumps(["closing", {"code": code, "reason": reason}]).decode()
            )
            if code not in RECONNECTING:
                final.append("41")
        sink = self.polling
        if sink is not None:
            if code >= 4000:  # over WebSocket, the socket's close logs it
                with bound(self.conn):
                    log.info("closing with %d: %s", code, reason)
            if code not in RECONNECTING:
                # Engine.IO's close. Without it the next GET finds no session, which
                # clients take for a lost transport, and reconnect.
                final.append("1")
            sink.finish(b"".join(text.encode() + SEPARATOR for text in final))
            if self._end_timer is None:
                timeout = self._node.settings.server.close_timeout
                self._end_timer = asyncio.get_running_loop().call_later(timeout, self._end)
        elif self.ws is not None:
            self.ws.transport.write(b"".join(text_frame(text.encode()) for text in final))
            self.ws.close(code, reason)

    async def poll(self, key: str | None = None, *, relayed: bool = False) -> tuple[int, bytes]:
        """A polling GET: (status, body).

        ``key``: the request's ``t`` (clients make one per request). A GET with the
        key of the last one answered is that request again, sent a second time by
        the load balancer after the instance that relayed it died: it gets the same
        answer, or the packets in it would be lost while the session goes on.

        ``relayed``: its answer still has to cross the broker, and counts as the GET
        under way until ``relayed_poll_done``: a GET that comes meanwhile overlaps,
        which ends the session (the client reconnects and recovers).
        """
        sink = self.polling
        if sink is None:
            return 400, error_body(RequestError.BAD_REQUEST)
        if key is not None and key == self._last_poll[0] and not sink.getting:
            return 200, self._last_poll[1]
        if sink.getting:
            self.conn.close(CloseCode.BAD_FRAME, "overlapping polling GET requests")
            return 400, error_body(RequestError.BAD_REQUEST)
        self.conn.last_seen = time.monotonic()
        sink.getting = True
        try:
            data = await sink.take(self._node.settings.server.ping_interval)
        except BaseException:
            sink.getting = False
            raise
        if relayed:
            self._relayed_poll = sink
        else:
            sink.getting = False
        if self.polling is sink and sink.closed and not sink.get_write_buffer_size():
            self._end()  # the close packet is on its way
        answer = data or b"6"
        self._last_poll = (key, answer)
        return 200, answer

    def relayed_poll_done(self, delivered: bool) -> None:
        """The answer of a relayed GET reached the broker, or (``delivered`` False)
        surely did not reach the client."""
        sink, self._relayed_poll = self._relayed_poll, None
        if sink is not None:
            sink.getting = False
        if not delivered:
            self.reply_lost()

    async def post(self, body: bytes) -> tuple[int, bytes]:
        """A polling POST: (status, body)."""
        sink = self.polling
        if sink is None or sink.closed:
            return 400, error_body(RequestError.BAD_REQUEST)
        if sink.posting:
            self.conn.close(CloseCode.BAD_FRAME, "overlapping polling POST requests")
            return 400, error_body(RequestError.BAD_REQUEST)
        limit = self._node.settings.server.max_frame_bytes
        if len(body) > limit:
            self.conn.close(CloseCode.LIMIT, f"payload over maxPayload ({limit} bytes)")
            return 413, error_body(RequestError.BAD_REQUEST)
        now = self.conn.last_seen = time.monotonic()
        sink.posting = True
        try:
            try:
                packets = decode_payload(body)
            except EngineIOError as error:
                await self.handle_packets((), error)
                return 400, error_body(RequestError.BAD_REQUEST)
            await self.handle_packets([(now, packet) for packet in packets])
        except Exception:
            # The top of this request's work: as a WebSocket's worker does.
            log.exception("connection %s failed", self.conn)
            self.conn.close(CloseCode.INTERNAL_ERROR, "internal error")
            return 500, error_body(RequestError.BAD_REQUEST)
        finally:
            sink.posting = False
        return 200, b"ok"

    # Upgrade ----------------------------------------------------------------------------

    def probed(self) -> bool:
        """A WebSocket probe for this session: end the waiting GET (a noop)."""
        sink = self.polling
        if sink is None or sink.closed or self.conn.closing:
            return False
        sink.write(b"6" + SEPARATOR)
        return True

    def upgrade(self, ws: WebSocket, probe: Connection) -> bool:
        """Move to the WebSocket (its ``5``): what is queued goes there first."""
        sink = self.polling
        conn = self.conn
        if sink is None or sink.closed or conn.closing:
            return False
        conn.flush()
        queued = sink.drain()
        conn.rebind(ws.transport, SIO_WEBSOCKET, self._closing, polled_to_frames)
        self._node.hub.recode(conn, SIO_POLLING)
        if queued:
            ws.transport.write(polled_to_frames(queued))
        self.polling = None
        sink.abort()  # a GET still waiting ends with a noop
        self.ws = ws
        self._node.admission.closed(probe)  # the probe's place; the session has its own
        ws.hand_over(conn, self)
        return True

    def take(self) -> bytes | None:
        """Hand this polling session to the instance that holds its WebSocket.

        Returns its state (``sio_state.MovedSession``), packed, with what was
        queued for it; from then on nothing is written here and no closing
        packet goes out. It stays in its rooms and presence until ``taken`` (or
        ``server.relay_timeout``), so that the move shows nobody a leave and a join.
        None: it cannot move now (closing, or a POST under way).
        """
        sink = self.polling
        conn = self.conn
        if sink is None or sink.closed or conn.closing or sink.posting:
            return None
        conn.flush()  # what this iteration queued goes with the rest, offset included
        standing = self._standing()
        identity = conn.identity
        state = MovedSession(
            user=identity.user if identity is not None else None,
            expires_at=identity.expires_at if identity is not None else 0.0,
            connected=self.connected,
            rooms=tuple((room, standing.get(room)) for room in conn.rooms),
            granted=tuple(room for room in conn.rooms if conn.is_granted(room)),
            queued=sink.drain(),
        )
        self._moved = True
        self.polling = None
        sink.abort()  # a GET still waiting ends with a noop
        conn.end()
        timeout = self._node.settings.server.relay_timeout
        self._end_timer = asyncio.get_running_loop().call_later(timeout, self.taken)
        return pack_moved(state)

    def taken(self) -> None:
        """The session lives on another instance now (or never will): forget it here."""
        if not self._moved or self._ended:
            return
        self._ended = True
        if self._end_timer is not None:
            self._end_timer.cancel()
        self._node.tasks.spawn(self.close(), f"moved {self.conn.id}")

    def reply_lost(self) -> None:
        """A relayed answer did not reach the broker: the client, which got an error
        instead, reconnects with a new session; this one must not go on with a hole."""
        if self._moved:
            self.taken()
        else:
            self.conn.close(CloseCode.GOING_AWAY, "a relayed answer was lost")

    # End --------------------------------------------------------------------------------

    def _end(self) -> None:
        """A polling session is over: forget it (in a task the node owns)."""
        if self._ended:
            return
        self._ended = True
        if self._end_timer is not None:
            self._end_timer.cancel()
        self._node.tasks.spawn(self._finish(), f"close {self.conn.id}")

    async def _finish(self) -> None:
        bind(self.conn)
        try:
            await self.close()
        finally:
            self._node.metrics.disconnects.labels(str(self._close_code)).inc()

    async def close(self) -> None:
        """The session is gone (its WebSocket closed, or its polling ended)."""
        if self._closed:
            return
        self._closed = True
        if self._end_timer is not None:
            self._end_timer.cancel()
        self.conn.end()
        self._node.engine_sessions.remove(self.sid, self)
        await self.session.close()


def _recovery(auth: dict[object, object]) -> tuple[str | None, dict[str, int]]:
    """The ``pid`` and rooms to recover of a CONNECT's auth (none when malformed)."""
    pid = auth.get("pid")
    if not isinstance(pid, str) or not 0 < len(pid) <= MAX_PID or "offset" not in auth:
        return None, {}
    try:
        return pid, decode_offset(auth["offset"])
    except SocketIOError:
        return None, {}


def polled_to_frames(data: bytes) -> bytes:
    """Polling packets (each followed by the separator) as WebSocket text frames."""
    return b"".join(text_frame(part) for part in data.split(SEPARATOR) if part)


class UpgradeProbe:
    """A WebSocket that asks to take over a polling session: ``2probe``, then ``5``."""

    def __init__(self, engine: EngineSocket, ws: WebSocket, probe: Connection) -> None:
        self._engine = engine
        self._ws = ws
        self._probe = probe

    async def handle_frames(self, frames: Sequence[tuple[float, bytes | str]]) -> None:
        for index, (_, data) in enumerate(frames):
            try:
                packet = decode_packet(data)
            except FrameError:
                packet = Packet(PacketType.NOOP, "bad")
            if packet.type is PacketType.PING and packet.data == "probe":
                if self._engine.probed():
                    self._ws.transport.write(text_frame(b"3probe"))
                    continue
            elif packet.type is PacketType.UPGRADE and self._engine.upgrade(self._ws, self._probe):
                rest = frames[index + 1 :]
                if rest:
                    await self._engine.handle_frames(rest)
                return
            self._ws.close(CloseCode.BAD_FRAME, "an upgrade is 2probe, then 5")
            return

    async def close(self) -> None:
        """The probe went away before ``5``: the polling session goes on."""


# Opening ----------------------------------------------------------------------------------


def open_polling(node: Node, authorization: str | None) -> EngineSocket:
    """A new polling session, registered, with its open packet waiting."""
    engine = EngineSocket(
        node, node.engine_sessions.new_id(), PollingSink(), SIO_POLLING, authorization
    )
    node.engine_sessions.add(engine.sid, engine)
    assert engine.polling is not None
    engine.polling.write(engine.open_frame())
    return engine


def open_websocket(
    node: Node, transport: asyncio.Transport, sid: str | None, authorization: str | None
) -> WebSocket:
    """The WebSocket of ``GET /socket.io/?transport=websocket``: a session of its
    own, or (with ``sid``) the upgrade of that polling session."""
    ws = WebSocket(node, transport, text_as_str=True)
    engine = node.engine_sessions.get(sid) if sid is not None else None
    if engine is not None:
        probe = ws.new_connection(SIO_WEBSOCKET)
        ws.serve(probe, UpgradeProbe(engine, ws, probe), None)
        return ws
    engine = EngineSocket(
        node, node.engine_sessions.new_id(), transport, SIO_WEBSOCKET, authorization
    )
    engine.ws = ws
    engine.conn.send_frame(engine.open_frame())
    ws.serve(engine.conn, engine, engine.session.open(None))
    return ws


def upgradable(node: Node, sid: str) -> bool:
    """Whether a WebSocket may take over session ``sid``: a polling one of ours, or
    one that another instance may hold (the probe asks it, ``sio_move.py``)."""
    engine = node.engine_sessions.get(sid)
    if engine is None:
        return node.relay.reaches(sid)
    return engine.polling is not None and not engine.conn.closing
