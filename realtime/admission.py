"""How many connections may be open that are not an authenticated WebSocket.

Such a connection costs a file descriptor and gives nothing back yet: a TCP
connection before its first request, an HTTP (REST) connection, a WebSocket
before ``connect``. Each holds a ``Ticket`` for its whole life in that state;
``server.max_unauthenticated`` caps them, so no flood of idle or slow sockets can
take the descriptors that authenticated clients, and ``/healthz``, need.

Beyond the cap a few spare places are kept for health checks: a connection in one
must show at once that it asks for ``/healthz``, ``/readyz`` or ``/metrics``
(``listener.py`` answers anything else with 503), and lives only briefly. When the
spare places are taken too, a new connection is closed as soon as it is accepted.
"""

from __future__ import annotations

from typing import Protocol


class _Identified(Protocol):
    @property
    def id(self) -> str: ...


class Ticket:
    """One connection's place; ``release`` it (once or more) when the connection
    authenticates or closes."""

    __slots__ = ("_admission", "spare")

    def __init__(self, admission: Admission, *, spare: bool) -> None:
        self._admission: Admission | None = admission
        self.spare = spare

    def release(self) -> None:
        admission, self._admission = self._admission, None
        if admission is not None:
            admission._left(self)


class Admission:
    def __init__(self, limit: int, spare: int | None = None) -> None:
        self.limit = limit
        self.spare_limit = spare if spare is not None else max(16, limit // 16)
        self.pending = 0
        self.spares = 0
        self._sockets: dict[str, Ticket] = {}

    def admit(self) -> Ticket | None:
        """A place for a connection just accepted; None: close it now."""
        if self.pending < self.limit:
            self.pending += 1
            return Ticket(self, spare=False)
        if self.spares < self.spare_limit:
            self.spares += 1
            return Ticket(self, spare=True)
        return None

    def opened(self, conn: _Identified, ticket: Ticket) -> None:
        """A WebSocket is open: its place is held until ``authenticated`` or ``closed``."""
        self._sockets[conn.id] = ticket

    def authenticated(self, conn: _Identified) -> None:
        ticket = self._sockets.pop(conn.id, None)
        if ticket is not None:
            ticket.release()

    closed = authenticated

    def _left(self, ticket: Ticket) -> None:
        if ticket.spare:
            self.spares -= 1
        else:
            self.pending -= 1
