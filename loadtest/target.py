"""Where and how the generator connects: URLs, credentials, protocol, source addresses."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import TypeVar
from urllib.parse import urlparse, urlunparse

from .fastws import FastConnection
from .tokens import TokenSource

C = TypeVar("C", bound=FastConnection)

REALTIME, SOCKETIO = "realtime", "socketio"
SOCKETIO_PATH = "/socket.io/"
SOCKETIO_QUERY = "EIO=4&transport=websocket"
PER_SOURCE = 20_000
"""Connections per source address to one destination before the next address: the
loopback has ~28,000 ephemeral ports (``ip_local_port_range``) per address pair."""


def normalize_url(url: str, protocol: str) -> str:
    """``ws://HOST:PORT`` completed with the protocol's path (and Engine.IO's query)."""
    parsed = urlparse(url)
    if parsed.scheme not in ("ws", "wss", "http", "https"):
        raise ValueError(f"{url}: expected ws://HOST:PORT[/path]")
    if parsed.scheme in ("wss", "https"):
        raise ValueError(f"{url}: TLS is not supported by the generator")
    path, query = parsed.path, parsed.query
    if protocol == SOCKETIO:
        path = path if path not in ("", "/") else SOCKETIO_PATH
        query = query or SOCKETIO_QUERY
    elif path in ("", "/"):
        path = "/ws"
    return urlunparse(("ws", parsed.netloc, path, "", query, ""))


def http_base(url: str) -> str:
    """``http://HOST:PORT`` of a WebSocket URL (the REST API lives on the same port)."""
    parsed = urlparse(url)
    return f"http://{parsed.netloc}"


def loopback_sources(urls: tuple[str, ...]) -> tuple[str, ...]:
    """127.0.0.1 … 127.0.0.254 when every URL is on the loopback, else no choice."""
    for url in urls:
        host = urlparse(url).hostname or ""
        try:
            if not ipaddress.ip_address(host).is_loopback or ":" in host:
                return ()
        except ValueError:
            if host != "localhost":
                return ()
    return tuple(f"127.0.0.{i}" for i in range(1, 255))


@dataclass(frozen=True)
class Target:
    urls: tuple[str, ...]
    """WebSocket URLs, complete (``normalize_url``); clients spread round-robin."""
    tokens: TokenSource = field(default_factory=TokenSource)
    protocol: str = REALTIME
    service_key: str | None = None
    connect_timeout: float = 10.0
    sources: tuple[str, ...] = ()
    """Source addresses; connection i uses ``sources[i // per_source]``."""
    per_source: int = PER_SOURCE

    def url(self, index: int) -> str:
        return self.urls[index % len(self.urls)]

    def source(self, index: int) -> str | None:
        if not self.sources:
            return None
        return self.sources[(index // self.per_source) % len(self.sources)]

    def rest_url(self, index: int = 0) -> str:
        return http_base(self.url(index))

    async def open(
        self,
        index: int,
        connection_class: type[C],
        token: str | None,
        subprotocols: tuple[str, ...] = (),
    ) -> C:
        """Connection ``index`` of the run: its URL and source address, the timeout."""
        return await connection_class.connect(
            self.url(index),
            headers={"Authorization": f"Bearer {token}"} if token else {},
            subprotocols=subprotocols,
            local_host=self.source(index),
            limit=self.connect_timeout,
        )
