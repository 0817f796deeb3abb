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
    NotificationsArchive,
    NotificationsQuery,
    NotificationsRead,
    NotificationsReadAll,
    NotificationsSeen,
    Ping,
    PreferencesQuery,
    PreferencesSet,
    PresenceQuery,
    PushSubscribe,
    PushUnsubscribe,
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
    PreferencesResult,
    RefreshResult,
    Result,
    RoomFailure,
    UnreadResult,
    UnseenResult,
    UsersResult,
)

from .auth import AuthError
from .clients import TooManyConnections
from .connection import Connection
from .convert import user_room
from .node import Node
from .preferences import read as read_preferences

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

    def take(self, now: float) -> bool:
        """Take a token for a command that arrived at ``now`` (monotonic, non-decreasing).

        Commands are charged at their arrival, not when they are carried out: a
        backlog that built up while the store or the broker was slow is no flood.
        """
        now = max(now, self._stamp)
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
        token = bearer(authorization)
        if token is None:
            self._auth_timer = asyncio.get_running_loop().call_later(
                self._node.settings.auth.auth_timeout,
                conn.close,
                CloseCode.UNAUTHORIZED,
                "no connect within the auth timeout",
            )
            return
        try:
            await self._node.clients.authenticate(conn, self._node.auth.verify_user(token))
            self._node.admission.authenticated(conn)
        except TooManyConnections as error:
            conn.close(CloseCode.TOO_MANY_CONNECTIONS, error.message)
            return
        except AuthError as error:
            conn.close(CloseCode.UNAUTHORIZED, error.message)
            return
        try:
            await self._node.joins.join(conn, RoomRequest(user_room(conn.user)))
        except CommandError as error:
            log.warning("could not join %s to its user room: %s", conn, error.message)

    async def close(self) -> None:
        if self._auth_timer is not None:
            self._auth_timer.cancel()
        await self._node.clients.disconnected(self._conn)

    async def handle_frames(self, frames: Sequence[tuple[float, bytes | str]]) -> None:
        """Carry out the commands of frames that arrived, in order.

        Each frame comes with the time it arrived (``time.monotonic()``), which is
        when its commands are charged to the rate limit.

        A run of ``send`` commands to rooms this connection has joined goes to
        the store together: their appends join one group commit, in the order they
        were sent (the store keeps a room's appends in order), and each is
        answered as it is stored. Everything else runs one command at a time.
        """
        conn = self._conn
        commands: list[tuple[float, Command | Rejected]] = []
        bad: FrameError | None = None
        for arrived, data in frames:
            try:
                commands.extend((arrived, c) for c in decode_commands(conn.codec, data))
            except FrameError as error:
                bad = error  # what came before it is still carried out
                break
        await self.handle_commands(commands, bad)

    async def handle_commands(
        self, commands: Sequence[tuple[float, Command | Rejected]], bad: FrameError | None = None
    ) -> None:
        """Carry out decoded commands (see ``handle_frames``); then close with 4000
        when ``bad`` says the input that followed them was no message."""
        conn = self._conn
        conn.busy = True
        try:
            index = 0
            while index < len(commands) and not conn.closing:
                end = index + 1
                while end < len(commands) and self._pipelined(commands[index][1], commands[end][1]):
                    end += 1
                if end - index == 1:
                    await self._handle(*commands[index])
                else:
                    await asyncio.gather(*(self._handle(*c) for c in commands[index:end]))
                index = end
        finally:
            conn.busy = False
        if bad is not None:
            self._node.metrics.bad_frames.inc()
            conn.close(CloseCode.BAD_FRAME, str(bad))
        elif self._node.draining:
            conn.close(CloseCode.RESTARTING, "server restarting: reconnect")

    async def connect(self, arrived: float, command: Connect) -> ConnectResult:
        """A ``connect`` whose reply the caller writes (Socket.IO's CONNECT packet).

        Charged to the rate limit like any command; raises ``CommandError``
        (``TooManyConnections`` included) and leaves the closing to the caller.
        """
        metrics = self._node.metrics
        if not self._bucket.take(arrived):
            metrics.rate_limited.inc()
            raise CommandError(ErrorCode.RATE_LIMITED, "too many commands, slow down")
        started = time.perf_counter()
        try:
            result = await self._connect(command)
        except CommandError as error:
            metrics.command_done(command.op, error.code.value)
            raise
        metrics.command_done(command.op, "ok", time.perf_counter() - started)
        return result

    @property
    def conn(self) -> Connection:
        return self._conn

    def _pipelined(self, first: Command | Rejected, other: Command | Rejected) -> bool:
        """Whether ``other`` may run alongside ``first``: both sends to joined rooms."""
        conn = self._conn
        return (
            isinstance(first, Send)
            and isinstance(other, Send)
            and conn.in_room(first.room)
            and conn.in_room(other.room)
        )

    async def _handle(self, arrived: float, command: Command | Rejected) -> None:
        conn = self._conn
        metrics = self._node.metrics
        if not conn.authenticated and command.op != Connect.op:  # a Rejected connect too
            self._answer_error(command.id, ErrorCode.UNAUTHORIZED, "send connect first")
            conn.close(CloseCode.UNAUTHORIZED, "the first message must be connect")
            return
        # Refused and invalid commands count too: flooding with garbage is flooding.
        if not self._bucket.take(arrived):
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
                return await node.joins.join(conn, request)
            case Leave(room=room):
                node.policy.resolve(room)
                await node.joins.leave(conn, room)
                return Empty()
            case Send(room=room, body_json=body, client_id=client_id):
                return await node.messages.send(conn, room, body, client_id)
            case Typing(room=room, active=active):
                await node.typing.set(conn, room, active)
                return Empty()
            case History(room=room, before=before, after=after, limit=limit):
                return await node.messages.history(
                    conn.user,
                    room,
                    before=before,
                    after=after,
                    limit=limit,
                    joined=conn.in_room(room),
                )
            case Read(room=room, seq=seq):
                return await node.messages.read(conn, room, seq)
            case PresenceQuery(room=room):
                users = await node.joins.presence(conn.user, room, joined=conn.in_room(room))
                return UsersResult(users)
            case NotificationsQuery(after=after, limit=limit, unread=unread, archived=archived):
                return await node.notices.list(
                    conn.user, after=after, limit=limit, unread=unread, archived=archived
                )
            case NotificationsRead(ids=ids, up_to=up_to):
                count = await node.notices.mark_read(conn.user, ids=ids, up_to=up_to)
                return UnreadResult(count)
            case NotificationsReadAll():
                return UnreadResult(await node.notices.mark_all_read(conn.user))
            case NotificationsSeen(up_to=up_to):
                return UnseenResult(await node.notices.mark_seen(conn.user, up_to=up_to))
            case NotificationsArchive(ids=ids, archived=archived):
                count = await node.notices.archive(conn.user, ids, archived=archived)
                return UnreadResult(count)
            case PreferencesQuery():
                found = await node.notices.preferences(conn.user)
                return PreferencesResult(found.to_wire())
            case PreferencesSet(document=document):
                try:
                    wanted = read_preferences(document)
                except CommandError as error:
                    raise CommandError(error.code, f"{command.op}: {error.message}") from None
                kept = await node.notices.set_preferences(conn.user, wanted, keep_email=True)
                return PreferencesResult(kept.to_wire())
            case Refresh(token=token):
                return self._refresh(token)
            case PushSubscribe(endpoint=endpoint, p256dh=p256dh, auth=auth):
                await node.push.subscribe(conn.user, endpoint, p256dh, auth)
                return Empty()
            case PushUnsubscribe(endpoint=endpoint):
                await node.push.unsubscribe(conn.user, endpoint)
                return Empty()
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
            await node.clients.authenticate(conn, identity)
            node.admission.authenticated(conn)
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
                rooms.append(await node.joins.join(conn, request))
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
        self._node.clients.refreshed(self._conn, identity)
        return RefreshResult(int(identity.expires_at))


def bearer(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()
