"""Accepting connections: every one waiting, each time the loop comes round, not one.

libuv, under uvloop, accepts one connection each time its loop polls. While the
loop has much to do (writes to 5,000 connections, a storm of rejoins) a turn takes
long, and so new connections wait in the kernel's backlog until it is full; a
balancer's connect then times out (nginx takes the instance out of rotation for
it), clients time out before the instance even read their request, and what it
finally accepts is mostly abandoned already. The instance looks dead while its
CPU idles. So the listening sockets are ours: when one is readable, every
connection waiting on it (up to ``MAX_PER_TURN``) is accepted and handed to the
loop as a transport with its protocol.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from collections.abc import Callable

from .tasks import TaskSet

log = logging.getLogger(__name__)

BACKLOG = 4096
MAX_PER_TURN = 512
"""Connections accepted per readiness of a socket; the rest at the next turn."""
PAUSE = 1.0
"""Seconds without accepting after the process ran out of descriptors (or memory)."""
_EXHAUSTED = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}

ProtocolFactory = Callable[[], asyncio.Protocol]


class Acceptor:
    """Listening sockets bound at once, accepting from ``start`` until ``close``."""

    def __init__(self, sockets: list[socket.socket], factory: ProtocolFactory) -> None:
        self.sockets = sockets
        self._factory = factory
        self._adopting = TaskSet()
        self._serving = False

    @classmethod
    def bind(cls, host: str, port: int, factory: ProtocolFactory) -> Acceptor:
        """Bind every address of ``host`` (as ``create_server`` does); raises OSError."""
        infos = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        sockets: list[socket.socket] = []
        try:
            for family, kind, proto, _, address in dict.fromkeys(infos):
                sock = socket.socket(family, kind, proto)
                sockets.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind(address)
                sock.setblocking(False)
        except BaseException:
            for sock in sockets:
                sock.close()
            raise
        return cls(sockets, factory)

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._serving = True
        for sock in self.sockets:
            sock.listen(BACKLOG)
            loop.add_reader(sock.fileno(), self._ready, sock)

    async def close(self) -> None:
        """Accept nothing more; connections already accepted carry on."""
        self._serving = False
        loop = asyncio.get_running_loop()
        for sock in self.sockets:
            loop.remove_reader(sock.fileno())
            sock.close()
        await self._adopting.close()

    def _ready(self, sock: socket.socket) -> None:
        for _ in range(MAX_PER_TURN):
            try:
                conn, _ = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue  # reset while in the backlog
            except OSError as error:
                self._pause(sock, error)
                return
            conn.setblocking(False)
            self._adopting.spawn(self._adopt(conn), "accept")

    async def _adopt(self, conn: socket.socket) -> None:
        try:
            await asyncio.get_running_loop().connect_accepted_socket(self._factory, conn)
        except OSError as error:
            log.debug("an accepted connection failed at once: %r", error)
            conn.close()

    def _pause(self, sock: socket.socket, error: OSError) -> None:
        if error.errno not in _EXHAUSTED:
            log.error("accepting connections failed: %r", error)
        else:
            log.warning("accepting paused for %gs: %s", PAUSE, error.strerror)
        loop = asyncio.get_running_loop()
        loop.remove_reader(sock.fileno())
        loop.call_later(PAUSE, self._resume, sock)

    def _resume(self, sock: socket.socket) -> None:
        if self._serving:
            asyncio.get_running_loop().add_reader(sock.fileno(), self._ready, sock)
