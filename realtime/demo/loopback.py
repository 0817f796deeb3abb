"""Whether a request may be handed a demo token: it must come, unforwarded, over
loopback, to a server that listens only on loopback, under a loopback name.

Each condition closes a different door: a server on 0.0.0.0 is reachable from other
machines; a proxy on this machine makes remote requests arrive from 127.0.0.1 (but
adds forwarding headers); a page elsewhere that rebinds its own name to 127.0.0.1
sends its name in ``Host``; a page of another origin sends its ``Origin``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping

FORWARDING_HEADERS = ("Forwarded", "X-Forwarded-For", "X-Forwarded-Host", "X-Real-IP", "Via")


def is_loopback_name(host: str) -> bool:
    """``localhost``, or a literal loopback address (127.0.0.0/8, ::1)."""
    host = host.strip().strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def refusal(
    *,
    listen_host: str,
    peer: object,
    host: str | None,
    authority: str,
    headers: Mapping[str, str],
) -> str | None:
    """Why the request is refused, or None.

    ``peer`` is the transport's peername, ``host`` the host of the request's ``Host``
    header and ``authority`` that header whole (host and port).
    """
    if not is_loopback_name(listen_host):
        return f"server.host {listen_host!r} is not a loopback address"
    address = peer[0] if isinstance(peer, tuple) and peer else None
    if not isinstance(address, str) or not is_loopback_name(address):
        return "the request did not come over loopback"
    forwarded = [name for name in FORWARDING_HEADERS if name in headers]
    if forwarded:
        return f"the request was forwarded ({forwarded[0]})"
    if host is None or not is_loopback_name(host):
        return "the Host header is not a loopback name"
    origin = headers.get("Origin")
    if origin is not None and origin not in (f"http://{authority}", f"https://{authority}"):
        return "the request came from a page of another origin"
    return None
