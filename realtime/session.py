"""A client's session: authentication state, rate limit, and command dispatch.

States: unauthenticated (only ``connect`` is accepted, within the auth timeout)
→ authenticated (every command). The session never touches the socket: it reads
decoded frames from ``ws.py`` and answers through its ``Connection``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence

from protocol import CloseCode, CommandError, ErrorCode, FrameError, decode_commands
from protocol.commands import (
    Command,
    Connect,
    History,
    Join,
    Leave,
    NotificationsQuery,
    NotificationsRead,
    Ping,
    PresenceQuery,
    Read,
    Refresh,
    Rejected,
    RoomRequest,
    Send,
    Typing,
)
from protocol.outgoing import (
    ConnectResult,
    Empty,
    ErrorReply,
    JoinResult,
    OkReply,
    RefreshResult,
    Result,
    RoomFailure,
    UnreadResult,
    UsersResult,
)

from .auth import AuthError
from .connection import Connection
from .node import Node, TooManyConnections, user_room

log = logging.getLogger(__name__)


class TokenBucket:
    """Commands per second with a burst; ``strikes`` counts refusals in a row."""

    __slots__ = ("_burst", "_rate", "_stamp", "_tokens", "strikes")

    def __init__(self, rate: float, burst: int) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._tokens = float(burst)
        self._stamp = time.monotonic()
        self.strikes = 0

    def take(self) -> bool:
        now = time.monotonic()
        self._tokens = min(self._burst, self._tokens + (now - self._stamp) * self._rate)
        self._stamp = now
        if self._tokens >= 1:
            self._tokens -= 1
            self.strikes = 0
            return True
        self.strikes += 1
        return False


class Session:
    __slots__ = ("_auth_timer", "_bucket", "_conn", "_node", "_strike_limit")

    def __init__(self, node: Node, conn: Connection) -> None:
        self._node = node
        self._conn = conn
        server = node.settings.server
        self._bucket = TokenBucket(server.rate_limit, server.rate_burst)
        self._strike_limit = server.rate_limit_strikes
        self._auth_timer: asyncio.TimerHandle | None = None

    async def open(self, authorization: str | None) -> None:
        """Authenticate from the upgrade request's header, or wait for ``connect``."""
        conn = self._conn
        token = _bearer(authorization)
        if token is None:
            self._auth_timer = asyncio.get_running_loop().call_later(
                self._node.settings.auth.auth_timeout,
                conn.close,
                CloseCode.UNAUTHORIZED,
                "no connect within the auth timeout",
            )
            return
        try:
            await self._node.authenticate(conn, self._node.auth.verify_user(token))
        except TooManyConnections as error:
            conn.close(CloseCode.TOO_MANY_CONNECTIONS, error.message)
            return
        except AuthError as error:
            conn.close(CloseCode.UNAUTHORIZED, error.message)
            return
        try:
            await self._node.join(conn, RoomRequest(user_room(conn.user)))
        except CommandError as error:
            log.warning("could not join %s to its user room: %s", conn, error.message)

    async def close(self) -> None:
        if self._auth_timer is not None:
            self._auth_timer.cancel()
        await self._node.disconnected(self._conn)

    async def handle_frames(self, frames: Sequence[bytes | str]) -> None:
        """Carry out the commands of frames that arrived, in order.

        A run of ``send`` commands to rooms this connection has joined goes to
        the store together: their appends join one group commit, in the order they
        were sent (the store keeps a room's appends in order), and each is
        answered as it is stored. Everything else runs one command at a time.
        """
        conn = self._conn
        commands: list[Command | Rejected] = []
        bad: FrameError | None = None
        for data in frames:
            try:
                commands.extend(decode_commands(conn.codec, data))
            except FrameError as error:
                bad = error  # what came before it is still carried out
                break
        conn.busy = True
        try:
            index = 0
            while index < len(commands) and not conn.closing:
                end = index + 1
                while end < len(commands) and self._pipelined(commands[index], commands[end]):
                    end += 1
                if end - index == 1:
                    await self._handle(commands[index])
                else:
                    await asyncio.gather(*(self._handle(c) for c in commands[index:end]))
                index = end
        finally:
            conn.busy = False
        if bad is not None:
            self._node.metrics.bad_frames.inc()
            conn.close(CloseCode.BAD_FRAME, str(bad))
        elif self._node.draining:
            conn.close(CloseCode.RESTARTING, "server restarting: reconnect")

    def _pipelined(self, first: Command | Rejected, other: Command | Rejected) -> bool:
        """Whether ``other`` may run alongside ``first``: both sends to joined rooms."""
        rooms = self._conn.rooms
        return (
            isinstance(first, Send)
            and isinstance(other, Send)
            and first.room in rooms
            and other.room in rooms
        )

    async def _handle(self, command: Command | Rejected) -> None:
        conn = self._conn
        metrics = self._node.metrics
        if not conn.authenticated and command.op != Connect.op:  # a Rejected connect too
            self._answer_error(command.id, ErrorCode.UNAUTHORIZED, "send connect first")
            conn.close(CloseCode.UNAUTHORIZED, "the first message must be connect")
            return
        # Refused and invalid commands count too: flooding with garbage is flooding.
        if not self._bucket.take():
            metrics.rate_limited.inc()
            self._answer_error(command.id, ErrorCode.RATE_LIMITED, "too many commands, slow down")
            if self._bucket.strikes >= self._strike_limit:
                conn.close(CloseCode.LIMIT, "rate limit exceeded")
            return
        if isinstance(command, Rejected):
            metrics.command_done(command.op or "-", command.code.value)
            self._answer_error(command.id, command.code, command.message)
            if command.op == "connect" and not conn.authenticated:
                conn.close(CloseCode.UNAUTHORIZED, command.message)
            return
        op = command.op
        started = time.perf_counter()
        joining = isinstance(command, Connect | Join)
        if joining:
            conn.hold()
        try:
            result = await self._dispatch(command)
        except CommandError as error:
            metrics.command_done(op, error.code.value)
            self._answer_error(command.id, error.code, error.message)
            if isinstance(error, TooManyConnections):
                conn.close(CloseCode.TOO_MANY_CONNECTIONS, error.message)
            elif isinstance(command, Connect) and not conn.authenticated:
                conn.close(CloseCode.UNAUTHORIZED, error.message)
            return
        else:
            metrics.command_done(op, "ok", time.perf_counter() - started)
            if command.id is not None:
                conn.reply(OkReply(command.id, result))
        finally:
            if joining:
                conn.release()

    def _answer_error(self, command_id: int | None, code: ErrorCode, message: str) -> None:
        if command_id is not None:
            self._conn.reply(ErrorReply(command_id, code, message))

    async def _dispatch(self, command: Command) -> Result:
        node = self._node
        conn = self._conn
        match command:
            case Connect():
                return await self._connect(command)
            case Join(request=request):
                return await node.join(conn, request)
            case Leave(room=room):
                node.policy.resolve(room)
                await node.leave(conn, room)
                return Empty()
            case Send(room=room, body_json=body, client_id=client_id):
                return await node.send(conn, room, body, client_id)
            case Typing(room=room, active=active):
                await node.typing(conn, room, active)
                return Empty()
            case History(room=room, before=before, after=after, limit=limit):
                return await node.history(
                    conn.user,
                    room,
                    before=before,
                    after=after,
                    limit=limit,
                    joined=room in conn.rooms,
                )
            case Read(room=room, seq=seq):
                return await node.read(conn, room, seq)
            case PresenceQuery(room=room):
                users = await node.room_presence(conn.user, room, joined=room in conn.rooms)
                return UsersResult(users)
            case NotificationsQuery(after=after, limit=limit, unread=unread):
                return await node.notifications(conn.user, after=after, limit=limit, unread=unread)
            case NotificationsRead(ids=ids, up_to=up_to):
                count = await node.mark_notifications_read(conn.user, ids=ids, up_to=up_to)
                return UnreadResult(count)
            case Refresh(token=token):
                return self._refresh(token)
            case Ping():
                return Empty()

    async def _connect(self, command: Connect) -> ConnectResult:
        node = self._node
        conn = self._conn
        if not conn.authenticated:
            if command.token is None:
                raise AuthError("connect needs a token (or an Authorization header)")
            identity = node.auth.verify_user(command.token)
            if self._auth_timer is not None:
                self._auth_timer.cancel()
                self._auth_timer = None
            await node.authenticate(conn, identity)
        elif command.token is not None:
            self._refresh(command.token)
        rooms: list[JoinResult | RoomFailure] = []
        own_room = user_room(conn.user)
        requested = {request.room for request in command.rooms}
        requests = list(command.rooms)
        if own_room not in requested:
            requests.insert(0, RoomRequest(own_room))
        for request in requests:
            try:
                rooms.append(await node.join(conn, request))
            except CommandError as error:
                rooms.append(RoomFailure(request.room, error.code, error.message))
        assert conn.identity is not None
        return ConnectResult(
            user=conn.user,
            session=conn.id,
            rooms=rooms,
            ping_interval=node.settings.server.ping_interval,
            expires_at=int(conn.identity.expires_at),
        )

    def _refresh(self, token: str) -> RefreshResult:
        identity = self._node.auth.verify_user(token)
        if identity.user != self._conn.user:
            raise CommandError(ErrorCode.FORBIDDEN, "refresh token is for another user")
        self._conn.identity = identity
        self._node.schedule_expiry(self._conn)
        return RefreshResult(int(identity.expires_at))


def _bearer(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()
