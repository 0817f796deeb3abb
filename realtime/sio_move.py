"""An upgrade that reached another instance than its polling session's: the session
moves to the instance that holds the WebSocket.

Behind a round-robin load balancer the WebSocket of ``transport=websocket&sid=…``
lands anywhere. Relaying its frames to the owner for the rest of its life would
tie two instances together and cross Redis with every push; instead the session
moves here, once, at the upgrade, and from then on lives here like any other:

1. ``2probe``: the owner is asked (relay op ``probe``) whether the session may
   be upgraded; it ends the waiting GET with a noop, as for a local upgrade.
   Only then is ``3probe`` answered. A failed probe closes the WebSocket: the
   client goes on polling, as socket.io-client and python-engineio do.
2. ``5``: the owner hands the session over (``take``): who it is, its rooms and
   where it stands in each (the seqs its offset would name), the packets queued
   for it. It writes nothing more. The client sends nothing while it upgrades,
   so no command is in flight.
3. Here: a Socket.IO session with the same sid is rebuilt from that state. The
   queued packets go out first; then each room is joined again with ``since``
   (no rule is checked again: the owner checked them), and what arrived after
   the position comes from the store, exactly as a recovering client would get
   it, before anything newer.
4. ``taken``: the owner forgets its copy: rooms, presence. Its presence entries
   stay until the new ones are in, so nobody sees the user leave and come back.

A failure after ``5`` (the owner gone, the store down, more missed than
``delivery.recovery_limit``) closes the WebSocket with 1001: the client
reconnects and recovers with its pid and offset, as after any lost transport.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from protocol import CloseCode, CommandError, FrameError
from protocol.commands import RoomRequest
from protocol.engineio import Packet, PacketType, decode_packet
from protocol.outgoing import MessagePush
from protocol.socketio import SIO_WEBSOCKET

from .auth import Identity
from .connection import Connection
from .frames import encode_frame, text_frame
from .node import Node
from .sio import EngineSocket, polled_to_frames
from .sio_relay import Op
from .sio_sessions import owner_of
from .sio_state import MovedFormatError, MovedSession, unpack_moved
from .websocket import WebSocket

log = logging.getLogger(__name__)


class RemoteUpgrade:
    """A WebSocket asking to take over a polling session another instance holds."""

    def __init__(
        self, node: Node, ws: WebSocket, probe: Connection, sid: str, authorization: str | None
    ) -> None:
        self._node = node
        self._ws = ws
        self._probe = probe
        self._sid = sid
        owner = owner_of(sid)
        assert owner is not None, "ws.py opens this only for another instance's sid"
        self._owner = owner
        self._authorization = authorization
        self._probed = False
        self._taken = False
        self._engine: EngineSocket | None = None

    async def handle_frames(self, frames: Sequence[tuple[float, bytes | str]]) -> None:
        for index, (_, data) in enumerate(frames):
            try:
                packet = decode_packet(data)
            except FrameError:
                packet = Packet(PacketType.NOOP, "bad")
            if packet.type is PacketType.PING and packet.data == "probe" and not self._probed:
                reply = await self._node.relay.request(self._owner, Op.PROBE, self._sid)
                if not reply.ok:
                    self._ws.close(CloseCode.NORMAL, "the session stays on polling")
                    return
                self._probed = True
                self._ws.transport.write(text_frame(b"3probe"))
                continue
            if packet.type is PacketType.UPGRADE and self._probed:
                engine = await self._move()
                if engine is not None:
                    rest = frames[index + 1 :]
                    if rest:
                        await engine.handle_frames(rest)
                return
            self._ws.close(CloseCode.BAD_FRAME, "an upgrade is 2probe, then 5")
            return

    async def _move(self) -> EngineSocket | None:
        node = self._node
        reply = await node.relay.request(self._owner, Op.TAKE, self._sid)
        if not reply.ok:
            self._ws.close(CloseCode.GOING_AWAY, "the session could not move here: reconnect")
            return None
        self._taken = True
        engine = self._engine = EngineSocket(
            node, self._sid, self._ws.transport, SIO_WEBSOCKET, self._authorization
        )
        engine.ws = self._ws
        try:
            complete = await _rebuild(node, engine, unpack_moved(reply.body), self._authorization)
        except (CommandError, MovedFormatError) as error:
            log.warning("session %s could not move here: %s", self._sid, error)
            complete = False
        finally:
            self._release_owner()
        if not complete:
            engine.conn.close(CloseCode.GOING_AWAY, "the session could not move here: reconnect")
            return None
        self._engine = None  # the WebSocket's from now on
        node.engine_sessions.add(self._sid, engine)
        node.admission.closed(self._probe)  # the probe's place; the session has its own
        self._ws.hand_over(engine.conn, engine)
        return engine

    def _release_owner(self) -> None:
        if self._taken:
            self._taken = False
            relay = self._node.relay
            request = relay.request(self._owner, Op.TAKEN, self._sid)
            self._node.tasks.spawn(request, f"taken {self._sid}")

    async def close(self) -> None:
        """The WebSocket went away before the session was its own."""
        self._release_owner()
        engine, self._engine = self._engine, None
        if engine is not None:
            await engine.close()


async def _rebuild(
    node: Node, engine: EngineSocket, state: MovedSession, authorization: str | None
) -> bool:
    """Make ``engine`` the moved session; False when something it had would be missing."""
    conn = engine.conn
    conn.hold()  # what the session had, then what it missed, before anything newer
    try:
        if state.queued:
            conn.reply_frame(polled_to_frames(state.queued))
        if state.user is None:
            await engine.session.open(authorization)
            return not conn.closing
        await node.clients.adopt(conn, Identity(state.user, state.expires_at))
        positions: dict[str, int] = {}
        for room, since in state.rooms:
            joined = await node.joins.join(conn, RoomRequest(room, since=since), check=False)
            if since is None:
                continue
            if not joined.recovered:
                return False
            positions[room] = joined.seq
            for message in joined.missed:
                conn.reply_frame(encode_frame(conn.codec, MessagePush(message)))
        for room in state.granted:
            conn.grant(room)
        engine.resume(state.connected, positions)
        return not conn.closing
    finally:
        conn.release()


def open_remote_upgrade(
    node: Node, transport: asyncio.Transport, *, sid: str, authorization: str | None
) -> WebSocket:
    """The WebSocket of an upgrade for a session another instance holds."""
    ws = WebSocket(node, transport, text_as_str=True)
    probe = ws.new_connection(SIO_WEBSOCKET)
    ws.serve(probe, RemoteUpgrade(node, ws, probe, sid, authorization), None)
    return ws
