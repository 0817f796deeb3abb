"""One open WebSocket: the only code that reads and writes WebSocket frames.

The WebSocket protocol itself is python-websockets' Sans-I/O core: bytes go in,
frames come out, and the bytes it wants written (pongs, close frames) are written
to the transport. This module is the few lines that feed it and hand complete
messages to the socket's peer (a native ``Session``, or a Socket.IO one). Pushes
and replies do not pass through here: ``Connection`` writes ready frames straight
to the transport.

A connection costs no task while it is idle: a task is started when a message
arrives and ends when the messages waiting are handled (in order; see
``Session.handle_frames``). When ``INBOX_LIMIT`` wait, the socket stops being read
until they are taken, so a fast sender meets TCP backpressure, not an unbounded
queue.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Sequence
from typing import Any, cast
from typing import Protocol as Protocol_

from websockets.frames import CloseCode as WebSocketCloseCode
from websockets.frames import Frame, Opcode
from websockets.protocol import Protocol, Side, State

from protocol import CloseCode, Codec

from .connection import Connection
from .frames import close_reason
from .logs import bind, bound
from .node import Node

# The name operators filter on since the endpoints and the socket were one module.
log = logging.getLogger("realtime.ws")

INBOX_LIMIT = 32


class _Frames(Protocol):
    """The data phase of a server connection; an oversized frame closes with 4008."""

    def fail(self, code: int, reason: str = "") -> None:
        if code == WebSocketCloseCode.MESSAGE_TOO_BIG:
            code, reason = CloseCode.LIMIT, "frame too large"
        super().fail(code, reason)


class Peer(Protocol_):
    """What a WebSocket hands its messages to: a native ``Session``, or Socket.IO's."""

    async def handle_frames(self, frames: Sequence[tuple[float, bytes | str]]) -> None: ...

    async def close(self) -> None:
        """The socket is gone: forget the session (once)."""


class WebSocket:
    """One open WebSocket: frames in, messages to its peer, close handshake.

    Made in two steps: the socket (framing), then ``serve`` with the connection
    and the peer it feeds (``native`` does both for ``/ws``).
    """

    __slots__ = (
        "_arrived",
        "_close_timer",
        "_fragments",
        "_fragments_text",
        "_frames",
        "_inbox",
        "_node",
        "_opening",
        "_paused",
        "_peer",
        "_text_as_str",
        "_transport",
        "_worker",
        "close_code",
        "conn",
        "finished",
    )

    def __init__(
        self, node: Node, transport: asyncio.Transport, *, text_as_str: bool = False
    ) -> None:
        """``text_as_str``: text frames reach the peer as ``str`` (binary ones as bytes)."""
        self._node = node
        self._transport = transport
        settings = node.settings.server
        self._frames = _Frames(Side.SERVER, state=State.OPEN, max_size=settings.max_frame_bytes)
        self._text_as_str = text_as_str
        self._fragments: list[bytes] | None = None
        self._fragments_text = False
        # Each message with the time it arrived: the rate limit charges it then.
        self._inbox: deque[tuple[float, bytes | str]] = deque()
        self._paused = False
        self._arrived = 0.0
        self._close_timer: asyncio.TimerHandle | None = None
        self.close_code: int | None = None
        self.finished = asyncio.get_running_loop().create_future()
        self._worker: asyncio.Task[None] | None = None
        self._opening = False

    def new_connection(self, codec: Codec) -> Connection:
        """A connection that writes to this socket and closes it."""
        settings = self._node.settings.server
        return Connection(
            secrets.token_hex(8),
            self._transport,
            codec,
            settings.send_buffer_bytes,
            self.close,
            self._node.hub.outbox,
            settings.send_buffer_soft_bytes or settings.send_buffer_bytes // 2,
        )

    def serve(self, conn: Connection, peer: Peer, opening: Awaitable[None] | None) -> None:
        """Feed ``peer``; ``opening`` runs before any message is handled."""
        self.conn = conn
        self._peer = peer
        if opening is not None:
            # Counted in server.max_opening until its start is done (``_opened``).
            self._opening = True
            self._node.openings.begin()
            self._node.metrics.opening.set(self._node.openings.opening)
            self._worker = asyncio.create_task(self._work(opening))

    def hand_over(self, conn: Connection, peer: Peer) -> None:
        """Messages from now on go to another peer and connection (Engine.IO's upgrade)."""
        self.conn = conn
        self._peer = peer

    @property
    def transport(self) -> asyncio.Transport:
        return self._transport

    # Input -------------------------------------------------------------------------

    def receive(self, data: bytes) -> None:
        self.conn.last_seen = self._arrived = time.monotonic()
        frames = self._frames
        frames.receive_data(data)
        for frame in frames.events_received():
            self._on_frame(cast(Frame, frame))  # past the handshake: frames only
        self._flush()

    def receive_eof(self) -> None:
        self._frames.receive_eof()
        self._flush()

    def _on_frame(self, frame: Frame) -> None:
        opcode = frame.opcode
        if opcode is Opcode.TEXT or opcode is Opcode.BINARY:
            text = opcode is Opcode.TEXT and self._text_as_str
            if frame.fin:
                data = bytes(frame.data)
                # Text frames were checked to be UTF-8 (websockets closes with 1007).
                self._enqueue(data.decode() if text else data)
            else:
                self._fragments = [bytes(frame.data)]
                self._fragments_text = text
        elif opcode is Opcode.CONT and self._fragments is not None:
            self._fragments.append(bytes(frame.data))
            if frame.fin:
                message = b"".join(self._fragments)
                self._fragments = None
                self._enqueue(message.decode() if self._fragments_text else message)
        elif opcode is Opcode.CLOSE and self.close_code is None:
            received = self._frames.close_rcvd
            self.close_code = received.code if received is not None else None

    def _enqueue(self, message: bytes | str) -> None:
        if self.conn.closing:
            return
        self._inbox.append((self._arrived, message))
        if len(self._inbox) >= INBOX_LIMIT and not self._paused:
            self._paused = True
            self._transport.pause_reading()
        if self._worker is None:
            self._worker = asyncio.create_task(self._work(None))

    async def _work(self, first: Any) -> None:
        """Handle waiting messages in order; the task ends when none are left."""
        bind(self.conn)  # this task's log lines name the connection
        try:
            if first is not None:
                await first
            inbox = self._inbox
            while inbox and not self.conn.closing:
                frames = list(inbox)
                inbox.clear()
                if self._paused:
                    self._paused = False
                    self._transport.resume_reading()
                # The peer may change (an upgrade) while messages wait: ask each time.
                await self._peer.handle_frames(frames)
        except Exception:
            log.exception("connection %s failed", self.conn)
            self.close(CloseCode.INTERNAL_ERROR, "internal error")
        finally:
            self._worker = None
            if self.conn.authenticated:
                # Authenticated, and what the client sent meanwhile is answered.
                self._opened()

    def _opened(self) -> None:
        """The start is over (done, or the connection is gone): free its place."""
        if self._opening:
            self._opening = False
            openings = self._node.openings
            openings.end()
            self._node.metrics.opening.set(openings.opening)

    # Output ------------------------------------------------------------------------

    def _flush(self) -> None:
        transport = self._transport
        if self._frames.state is not State.OPEN:
            # Closing, whoever started it: the close frame is about to be written,
            # then the half-close. Frames queued before go out ahead of it; none
            # may follow (a write after write_eof raises).
            self.conn.end()
        for data in self._frames.data_to_send():
            if data:
                transport.write(data)
            elif not transport.is_closing():
                # End of the closing handshake (or a failure): half-close, and let
                # the client close the TCP connection, or drop it when it won't.
                if transport.can_write_eof():
                    transport.write_eof()
                else:
                    transport.close()
                self._arm_close_timer()

    def close(self, code: int, reason: str) -> None:
        """Start the closing handshake (``Connection``'s close callback)."""
        frames = self._frames
        if frames.state is State.OPEN:
            if code >= 4000:
                with bound(self.conn):
                    log.info("closing with %d: %s", code, reason)
            self.close_code = code
            reason = self._node.reconnects.advise(code, reason)
            frames.send_close(code, close_reason(reason).decode())
            self._flush()
            self._arm_close_timer()

    def _arm_close_timer(self) -> None:
        if self._close_timer is None:
            timeout = self._node.settings.server.close_timeout
            self._close_timer = asyncio.get_running_loop().call_later(
                timeout, self._transport.abort
            )

    # End ---------------------------------------------------------------------------

    def lost(self) -> None:
        """The TCP connection is gone: forget the session (in a task the node owns)."""
        if self._close_timer is not None:
            self._close_timer.cancel()
        self.conn.end()
        self._opened()
        self._node.tasks.spawn(self._finish(), f"close {self.conn.id}")

    async def _finish(self) -> None:
        bind(self.conn)
        worker = self._worker
        if worker is not None:
            worker.cancel()
            await asyncio.wait([worker])
        try:
            await self._peer.close()
        finally:
            code = self.close_code or WebSocketCloseCode.ABNORMAL_CLOSURE
            self._node.metrics.disconnects.labels(str(code)).inc()
            if not self.finished.done():
                self.finished.set_result(None)
