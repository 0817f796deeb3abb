"""Socket.IO polling without sticky sessions: serving a session another instance holds.

A polling session lives on the instance that opened it, and its id names that
instance's broker address (``sio_sessions.py``). A request for it that reaches
another instance is relayed to the owner over the broker (``Broker.send_direct``)
and carried out there by the very code that serves a local request::

    requester                               owner
    request(id, op, sid, body)  ──────────▶ runs it on the session (a long poll
                                            waits there, as for a local GET)
    answers the client          ◀────────── reply(id, status, body)

Every wait is bounded, and every failure ends in an answer after which the client
reconnects and recovers what it missed with its pid and offset (docs/socketio.md):

- the owner is gone (no instance listens at its address, or it stops answering
  the pings sent while requests to it wait): 400 "Session ID unknown";
- the broker is down, the owner did not answer within the request's wait (the
  long poll's, plus ``server.relay_timeout``), or ``server.max_relayed`` requests
  wait already: 503;
- the owner could not hand its reply to the broker (or no instance took it): it
  may have carried packets, so the owner ends that session, which the client,
  having got an error, no longer uses.

The ops: ``get`` (a long poll; its body is the request's ``t``, see
``EngineSocket.poll``) and ``post`` (packets in); for a WebSocket upgrade
that reached another instance ``probe``, ``take`` (hand the session over, see
``sio_move.py``) and ``taken`` (the new instance has it: let the old one go);
``ping`` asks whether an owner is alive.

Between instances a message is one msgpack array: ``[0, reply_to, id, op, sid,
body]`` for a request, ``[1, id, status, body, authenticated]`` for a reply.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final, Protocol

import msgpack
import orjson

from protocol.engineio import RequestError, error_body

from .broker import Broker, BrokerUnavailable
from .config import Settings
from .metrics import Metrics
from .sio_sessions import owner_of
from .tasks import TaskSet

log = logging.getLogger(__name__)

OWNER_CHECK_INTERVAL: Final = 1.0
"""Seconds between pings of the owners that requests wait for."""
_REQUEST: Final = 0
_REPLY: Final = 1


class Op(StrEnum):
    GET = "get"
    POST = "post"
    PROBE = "probe"
    TAKE = "take"
    TAKEN = "taken"
    PING = "ping"


@dataclass(frozen=True, slots=True)
class Request:
    reply_to: str
    id: int
    op: Op
    sid: str
    body: bytes = b""


@dataclass(frozen=True, slots=True)
class Reply:
    """What the client is answered (status and body), and whether its session is
    authenticated (its HTTP connection then gives its admission place back)."""

    status: int
    body: bytes
    authenticated: bool = False

    @property
    def ok(self) -> bool:
        return self.status == 200


_ENDS_WHEN_LOST: Final = frozenset({Op.POST, Op.TAKE})
"""Ops after whose lost reply the client gives the session up: so does the owner."""


class RelayFormatError(ValueError):
    """Bytes from the broker that are not a relay message of this version."""


def pack_request(request: Request) -> bytes:
    return msgpack.packb(
        [_REQUEST, request.reply_to, request.id, request.op.value, request.sid, request.body],
        use_bin_type=True,
    )


def pack_reply(request_id: int, reply: Reply) -> bytes:
    return msgpack.packb(
        [_REPLY, request_id, reply.status, reply.body, reply.authenticated], use_bin_type=True
    )


def unpack(data: bytes) -> Request | tuple[int, Reply]:
    """A request, or a reply with the id of the request it answers."""
    try:
        kind, *fields = msgpack.unpackb(data, raw=False)
        return _request(fields) if kind == _REQUEST else _reply(kind, fields)
    except (ValueError, TypeError, msgpack.UnpackException) as error:
        raise RelayFormatError(f"not a relay message: {error}") from None


def _request(fields: list[Any]) -> Request:
    reply_to, request_id, op, sid, body = fields
    if not (isinstance(reply_to, str) and isinstance(sid, str) and type(body) is bytes):
        raise TypeError("ill-typed request")
    return Request(reply_to, int(request_id), Op(op), sid, body)


def _reply(kind: object, fields: list[Any]) -> tuple[int, Reply]:
    if kind != _REPLY:
        raise ValueError(f"unknown kind {kind!r:.20}")
    request_id, status, body, authenticated = fields
    if type(body) is not bytes:
        raise TypeError("ill-typed reply")
    return int(request_id), Reply(int(status), body, bool(authenticated))


GONE: Final = Reply(RequestError.UNKNOWN_SID.status, error_body(RequestError.UNKNOWN_SID))


def unavailable(reason: str) -> Reply:
    """A 503 with Engine.IO's error shape: the client reconnects."""
    body = orjson.dumps({"code": RequestError.BAD_REQUEST.value, "message": reason})
    return Reply(503, body)


class RelayTarget(Protocol):
    """A session as the owner serves relayed requests (``sio.EngineSocket``)."""

    @property
    def authenticated(self) -> bool: ...

    async def poll(self, key: str | None = None, *, relayed: bool = False) -> tuple[int, bytes]: ...

    def relayed_poll_done(self, delivered: bool) -> None:
        """A relayed GET's answer was handed to the broker (or was lost)."""

    async def post(self, body: bytes) -> tuple[int, bytes]: ...

    def probed(self) -> bool: ...

    def take(self) -> bytes | None:
        """The session's state for another instance, packed; None: it cannot move now."""

    def taken(self) -> None:
        """The other instance has it: forget it here."""

    def reply_lost(self) -> None:
        """A reply that may carry packets did not reach the broker: end the session."""


@dataclass(slots=True)
class _Pending:
    owner: str
    op: Op
    future: asyncio.Future[Reply]


class Relay:
    """Both sides: ``request`` relays to an owner; ``on_direct`` serves the others'
    requests and takes the replies to ours. ``watch`` (a loop the node owns) pings
    the owners that requests wait for."""

    def __init__(
        self,
        broker: Broker,
        settings: Settings,
        metrics: Metrics,
        tasks: TaskSet,
        lookup: Callable[[str], RelayTarget | None],
    ) -> None:
        self._broker = broker
        self.address = broker.address
        self._timeout = settings.server.relay_timeout
        self._long_poll = settings.server.ping_interval
        self._ping_wait = settings.broker.timeout
        self._limit = settings.server.max_relayed
        self._metrics = metrics
        self._tasks = tasks
        self._lookup = lookup
        self._ids = itertools.count(1)
        self._pending: dict[int, _Pending] = {}
        self._serving = 0

    def reaches(self, sid: str) -> bool:
        """Whether ``sid`` names another instance this one may relay to."""
        owner = owner_of(sid)
        return self._broker.shared and owner is not None and owner != self.address

    # Requesting ------------------------------------------------------------------------

    async def request(self, owner: str, op: Op, sid: str, body: bytes = b"") -> Reply:
        """Relay a request to ``owner`` and wait for its reply; never raises for a
        failure (the reply then says it, see the module's docstring)."""
        if owner == self.address:
            return GONE  # it would be ours: it is not here, so it is nowhere
        if len(self._pending) >= self._limit:
            self._count(op, "overloaded")
            return unavailable("too many relayed requests: retry")
        request_id = next(self._ids)
        future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = _Pending(owner, op, future)
        data = pack_request(Request(self.address, request_id, op, sid, body))
        wait = self._ping_wait if op is Op.PING else self._timeout
        if op is Op.GET:
            wait += self._long_poll
        try:
            try:
                delivered = await self._broker.send_direct(owner, data)
            except BrokerUnavailable as error:
                self._count(op, "unavailable")
                return unavailable(f"the session's instance cannot be reached: {error}")
            if not delivered:
                self._count(op, "gone")
                return GONE
            try:
                async with asyncio.timeout(wait):
                    reply = await future
            except TimeoutError:
                self._count(op, "timeout")
                return unavailable("the session's instance did not answer in time")
            self._count(op, "ok" if reply.ok else "gone" if reply == GONE else str(reply.status))
            return reply
        finally:
            self._pending.pop(request_id, None)

    def _count(self, op: Op, result: str) -> None:
        self._metrics.sio_relayed.labels(op.value, result).inc()

    async def watch(self) -> None:
        """Ping the owners that requests wait for; fail those requests when one is gone.

        A killed instance's clients then learn within about a second (its address
        has no listener), not at the end of their long polls; one whose machine
        vanished, within ``broker.timeout`` more.
        """
        while True:
            await asyncio.sleep(OWNER_CHECK_INTERVAL)
            owners = {p.owner for p in self._pending.values() if p.op is not Op.PING}
            if owners:
                await asyncio.gather(*(self._check(owner) for owner in owners))

    async def _check(self, owner: str) -> None:
        reply = await self.request(owner, Op.PING, "")
        if not reply.ok and reply != GONE:
            # No answer in time: ask once more, so that an owner killed while a ping
            # was on its way is found gone (its clients are told so), not just late.
            reply = await self.request(owner, Op.PING, "")
        if reply.ok:
            return
        for pending in list(self._pending.values()):
            if pending.owner == owner and pending.op is not Op.PING and not pending.future.done():
                pending.future.set_result(reply)

    # Serving and replies ---------------------------------------------------------------

    def on_direct(self, data: bytes) -> None:
        """A message from the broker (called on the loop; must not block)."""
        try:
            message = unpack(data)
        except RelayFormatError as error:
            log.warning("dropped a relay message: %s", error)
            return
        if isinstance(message, tuple):
            request_id, reply = message
            pending = self._pending.get(request_id)
            if pending is not None and not pending.future.done():
                pending.future.set_result(reply)
            return  # else its requester gave up; it answered the client already
        if self._serving >= self._limit:
            refused = unavailable("too many relayed requests on the session's instance")
            self._tasks.spawn(self._answer(message, refused), "relay-refuse")
            return
        self._serving += 1
        self._tasks.spawn(self._serve(message), f"relay-{message.op.value}")

    async def _serve(self, request: Request) -> None:
        self._metrics.sio_relay_served.labels(request.op.value).inc()
        try:
            if request.op is Op.PING:
                await self._answer(request, Reply(200, b""))
                return
            target = self._lookup(request.sid)
            if target is None:
                await self._answer(request, GONE)
                return
            try:
                reply = await self._carry_out(target, request)
            except Exception:
                # The top of this request's work, as a local request's handler.
                log.exception("serving a relayed %s failed", request.op.value)
                reply = Reply(500, error_body(RequestError.BAD_REQUEST))
            delivered = await self._answer(request, reply)
            if request.op is Op.GET:
                target.relayed_poll_done(delivered)
            elif not delivered and request.op in _ENDS_WHEN_LOST:
                target.reply_lost()
        finally:
            self._serving -= 1

    async def _carry_out(self, target: RelayTarget, request: Request) -> Reply:
        match request.op:
            case Op.GET:
                key = request.body.decode(errors="replace") or None
                status, body = await target.poll(key, relayed=True)
            case Op.POST:
                status, body = await target.post(request.body)
            case Op.PROBE:
                status, body = (200, b"") if target.probed() else (400, b"")
            case Op.TAKE:
                state = target.take()
                status, body = (200, state) if state is not None else (400, b"")
            case Op.TAKEN:
                target.taken()
                status, body = 200, b""
            case Op.PING:
                status, body = 200, b""
        return Reply(status, body, target.authenticated)

    async def _answer(self, request: Request, reply: Reply) -> bool:
        """Send a reply; False when it surely did not reach its requester."""
        try:
            return await self._broker.send_direct(request.reply_to, pack_reply(request.id, reply))
        except BrokerUnavailable as error:
            log.info("a relayed %s's reply was lost: %s", request.op.value, error)
            return False
