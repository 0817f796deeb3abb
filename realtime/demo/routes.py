"""``GET /demo/`` and its files, ``POST /demo/token`` (sign in) and ``POST /demo/poke``.

Registered only with ``demo.enabled``. Signing in needs no password: the handler
mints a token for whatever user name it is given, and makes that user a member of
``demo.room``, which is what an app's backend would do after its own login. So it
answers only requests that ``loopback.refusal`` lets through.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from importlib import resources

from aiohttp import web

from protocol import CommandError, ErrorCode, jsonvalue

from ..app_keys import NODE
from ..auth import USER_ID
from ..config import NotificationTypeSettings, Settings
from ..errors import error_response, json_error
from ..node import Node
from .loopback import is_loopback_name, refusal

log = logging.getLogger(__name__)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

FILES = {
    "index.html": "text/html",
    "demo.css": "text/css",
    "demo.js": "text/javascript",
    "realtime.js": "text/javascript",
}
# Nothing but this origin: the page loads no external resource, and a script
# injected into it could not send anything elsewhere.
HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
POKE_TYPE = "poke"
MAX_POKE_TEXT = 200


def add_demo_routes(app: web.Application, settings: Settings) -> None:
    """Serve the demo when ``demo.enabled`` (and say loudly that it is on)."""
    if not settings.demo.enabled:
        return
    package = resources.files(__package__)
    files = {name: (package / name).read_bytes() for name in FILES}
    log.warning(
        "DEMO MODE IS ON (demo.enabled): /demo/ signs in ANY user name without a password "
        "and mints its token (over loopback only). Never enable it on a server others use."
    )
    host = settings.server.host
    log.info(
        "demo page: http://%s:%d/demo/", f"[{host}]" if ":" in host else host, settings.server.port
    )
    if not is_loopback_name(settings.server.host):
        log.warning(
            "demo: server.host %r is not loopback, so /demo/token refuses every request",
            settings.server.host,
        )

    async def page(request: web.Request) -> web.Response:
        name = request.match_info.get("name", "index.html")
        if name not in files:
            raise web.HTTPNotFound()
        return web.Response(
            body=files[name], content_type=FILES[name], charset="utf-8", headers=HEADERS
        )

    async def to_page(request: web.Request) -> web.Response:
        raise web.HTTPPermanentRedirect("/demo/")

    app.router.add_get("/demo", to_page)
    app.router.add_get("/demo/", page)
    app.router.add_get("/demo/{name}", page)
    app.router.add_post("/demo/token", _token)
    app.router.add_post("/demo/poke", _poke)
    app.on_startup.append(_declare_poke)  # after the lifecycle made the node


async def _declare_poke(app: web.Application) -> None:
    """The demo's own notification type: in-app only, whatever types are configured."""
    app[NODE].notices.declare_type(NotificationTypeSettings(channels=["in_app"], name=POKE_TYPE))


def _local_only(handler: Handler) -> Handler:
    """Refuses what ``loopback.refusal`` refuses; answers ``CommandError`` as JSON."""

    async def guarded(request: web.Request) -> web.StreamResponse:
        node: Node = request.app[NODE]
        transport = request.transport
        why = refusal(
            listen_host=node.settings.server.host,
            peer=transport.get_extra_info("peername") if transport is not None else None,
            host=request.url.host,
            authority=request.host,
            headers=request.headers,
        )
        if why is not None:
            log.warning("demo: refused %s from %s: %s", request.path, request.remote, why)
            return json_error(403, "forbidden", f"demo sign-in is for loopback only: {why}")
        try:
            return await handler(request)
        except CommandError as error:
            return error_response(error.code, error.message)

    return guarded


async def _json_object(request: web.Request) -> dict[str, object]:
    try:
        body = jsonvalue.loads(await request.read())
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise CommandError(ErrorCode.BAD_REQUEST, "the body must be a JSON object")
    return body


def _user_field(body: dict[str, object], key: str) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not USER_ID.fullmatch(value):
        raise CommandError(
            ErrorCode.BAD_REQUEST, f"'{key}' must be a user id: 1 to 128 of A-Z a-z 0-9 _ . : -"
        )
    return value


@_local_only
async def _token(request: web.Request) -> web.StreamResponse:
    """``{user}`` → ``{user, token, expires_at, room}``; the user is made a member of the room."""
    node: Node = request.app[NODE]
    room = node.settings.demo.room
    user = _user_field(await _json_object(request), "user")
    await node.membership.add_member(room, user)
    token = node.auth.mint(user)
    expires_at = node.auth.verify_user(token).expires_at
    log.info("demo: signed in %s", user)
    return web.json_response(
        {"user": user, "token": token, "expires_at": int(expires_at), "room": room},
        headers={"Cache-Control": "no-store"},
    )


@_local_only
async def _poke(request: web.Request) -> web.StreamResponse:
    """``Authorization: Bearer <user token>``, ``{to, text}``: a ``poke`` notification
    from that user to ``to``, so that the page can ring another user's bell."""
    node: Node = request.app[NODE]
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise CommandError(ErrorCode.UNAUTHORIZED, "Authorization: Bearer <user token>")
    actor = node.auth.verify_user(token.strip()).user
    body = await _json_object(request)
    to = _user_field(body, "to")
    text = body.get("text", "")
    if not isinstance(text, str) or len(text) > MAX_POKE_TEXT:
        raise CommandError(ErrorCode.BAD_REQUEST, f"'text' is at most {MAX_POKE_TEXT} characters")
    recipients = await node.notices.notify(
        to=[to],
        followers_of=None,
        type=POKE_TYPE,
        data_json=jsonvalue.dumps({"text": text, "room": node.settings.demo.room}),
        actor=actor,
    )
    return web.json_response({"recipients": recipients}, status=202)
