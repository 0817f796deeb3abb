"""The REST API for the backend, under ``/api/v1/``, plus health, readiness and metrics.

Every ``/api/v1`` call but the OpenAPI document needs a service key. Inputs are
validated by the same protocol code as WebSocket commands, so both speak the
same rules and the same error messages.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from protocol import CommandError, ErrorCode, jsonvalue, parse_command
from protocol.commands import MAX_LIMIT, History, NotificationsQuery, NotificationsRead, Rejected
from protocol.commands import Send as SendCommand
from protocol.outgoing import Embed, Outgoing

from .app_keys import NODE
from .auth import USER_ID
from .errors import CODE_FOR_STATUS, STATUS, error_response, json_error
from .metrics import CONTENT_TYPE
from .node import Node
from .openapi import openapi_document

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
MAX_NOTIFY_USERS = 10_000
MAX_TYPE = 64


def _embed(text: str) -> object:
    return orjson.Fragment(text)


_EMBED: Embed = _embed


def respond(data: Outgoing | dict[str, Any], status: int = 200) -> web.Response:
    wire = data if isinstance(data, dict) else data.to_wire(_EMBED)
    return web.Response(body=orjson.dumps(wire), status=status, content_type="application/json")


def _no_content() -> web.Response:
    return web.Response(status=204)


def _bad(message: str) -> CommandError:
    return CommandError(ErrorCode.BAD_REQUEST, message)


@web.middleware
async def api_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Service-key check and JSON errors for everything under /api/v1."""
    if not request.path.startswith("/api/"):
        return await handler(request)
    node = request.app[NODE]
    if request.path != "/api/v1/openapi.json" and not node.auth.is_service_key(
        request.headers.get("Authorization")
    ):
        return json_error(
            401, "unauthorized", "a service key is required: Authorization: Bearer <key>"
        )
    try:
        return await handler(request)
    except CommandError as error:
        return error_response(error.code, error.message)
    except web.HTTPException as error:
        if error.status < 400:
            raise
        code = CODE_FOR_STATUS.get(error.status, ErrorCode.BAD_REQUEST)
        return json_error(error.status, str(code), error.reason)


# Input helpers -------------------------------------------------------------------------


async def _json_body(request: web.Request, *, required: bool = True) -> dict[str, Any]:
    raw = await request.read()
    if not raw:
        if required:
            raise _bad("a JSON object body is required")
        return {}
    try:
        body = jsonvalue.loads(raw)
    except ValueError as error:
        raise _bad(f"body is not valid JSON: {error}") from None
    if not isinstance(body, dict):
        raise _bad("body must be a JSON object")
    return body


def _user(value: str, what: str = "user") -> str:
    if not USER_ID.fullmatch(value):
        raise _bad(f"{what} must be a user id matching [A-Za-z0-9_.:-]{{1,128}}, got {value!r:.40}")
    return value


def _query_int(request: web.Request, key: str) -> int | None:
    text = request.query.get(key)
    if text is None or text == "":
        return None
    try:
        return int(text)
    except ValueError:
        raise _bad(f"'{key}' must be an integer, got {text!r:.40}") from None


def _query_bool(request: web.Request, key: str) -> bool:
    text = request.query.get(key, "").lower()
    if text in ("", "0", "false", "no"):
        return False
    if text in ("1", "true", "yes"):
        return True
    raise _bad(f"'{key}' must be true or false")


def _command(fields: dict[str, Any]) -> Any:
    """Validate REST input with the WebSocket command rules."""
    command = parse_command({"id": 1, **fields})
    if isinstance(command, Rejected):
        raise CommandError(command.code, command.message.partition(": ")[2] or command.message)
    return command


# Handlers ------------------------------------------------------------------------------


def _node(request: web.Request) -> Node:
    return request.app[NODE]


async def post_message(request: web.Request) -> web.Response:
    body = await _json_body(request)
    user = body.get("user")
    if user is not None and (not isinstance(user, str) or not USER_ID.fullmatch(user)):
        raise _bad("'user' must be a user id or absent")
    fields = {"op": "send", "room": request.match_info["room"], "client_id": body.get("client_id")}
    if "body" in body:
        fields["body"] = body["body"]
    command: SendCommand = _command(fields)
    result = await _node(request).messages.publish(
        command.room, user, command.body_json, command.client_id
    )
    # A retry with the same client_id answers like the first call (with duplicate: true).
    return respond(result, status=201)


async def get_messages(request: web.Request) -> web.Response:
    command: History = _command(
        {
            "op": "history",
            "room": request.match_info["room"],
            "before": _query_int(request, "before"),
            "after": _query_int(request, "after"),
            "limit": _query_int(request, "limit"),
        }
    )
    result = await _node(request).messages.history(
        None, command.room, before=command.before, after=command.after, limit=command.limit
    )
    return respond(result)


def _room(request: web.Request) -> str:
    room = request.match_info["room"]
    _node(request).policy.resolve(room)
    return room


async def put_member(request: web.Request) -> web.Response:
    await _node(request).membership.add_member(_room(request), _user(request.match_info["user"]))
    return _no_content()


async def delete_member(request: web.Request) -> web.Response:
    await _node(request).membership.remove_member(_room(request), _user(request.match_info["user"]))
    return _no_content()


async def get_members(request: web.Request) -> web.Response:
    return respond({"users": await _node(request).membership.members(_room(request))})


async def get_presence(request: web.Request) -> web.Response:
    return respond({"users": await _node(request).joins.presence(None, _room(request))})


async def put_following(request: web.Request) -> web.Response:
    user = _user(request.match_info["user"])
    target = _user(request.match_info["target"], "target")
    if user == target:
        raise _bad("a user cannot follow themselves")
    await _node(request).membership.follow(user, target)
    return _no_content()


async def delete_following(request: web.Request) -> web.Response:
    user = _user(request.match_info["user"])
    await _node(request).membership.unfollow(user, _user(request.match_info["target"], "target"))
    return _no_content()


async def post_notification(request: web.Request) -> web.Response:
    body = await _json_body(request)
    to = body.get("to")
    followers_of = body.get("followers_of")
    if (to is None) == (followers_of is None):
        raise _bad("give 'to' (a list of user ids) or 'followers_of' (a user id)")
    if to is not None:
        if not isinstance(to, list) or not 0 < len(to) <= MAX_NOTIFY_USERS:
            raise _bad(f"'to' must be a list of 1 to {MAX_NOTIFY_USERS} user ids")
        for user in to:
            if not isinstance(user, str):
                raise _bad("'to' must list user ids (strings)")
            _user(user, "each of 'to'")
    elif not isinstance(followers_of, str):
        raise _bad("'followers_of' must be a user id")
    else:
        _user(followers_of, "followers_of")
    kind = body.get("type")
    if not isinstance(kind, str) or not 0 < len(kind) <= MAX_TYPE:
        raise _bad(f"'type' must be a string of 1 to {MAX_TYPE} characters, like 'like'")
    actor = body.get("actor")
    if actor is not None and (not isinstance(actor, str) or not USER_ID.fullmatch(actor)):
        raise _bad("'actor' must be a user id or absent")
    try:
        data_json = jsonvalue.dumps(body.get("data"))
    except ValueError as error:
        raise _bad(f"'data' must be a JSON value: {error}") from None
    if len(data_json) > request.app[NODE].settings.namespaces["user"].max_body_bytes:
        raise CommandError(ErrorCode.TOO_LARGE, "'data' is larger than the user namespace allows")
    recipients = await _node(request).notices.notify(
        to=to, followers_of=followers_of, type=kind, data_json=data_json, actor=actor
    )
    return respond({"recipients": recipients}, status=202)


async def get_notifications(request: web.Request) -> web.Response:
    user = _user(request.match_info["user"])
    command: NotificationsQuery = _command(
        {
            "op": "notifications",
            "after": _query_int(request, "after"),
            "limit": _query_int(request, "limit"),
            "unread": _query_bool(request, "unread"),
        }
    )
    result = await _node(request).notices.list(
        user, after=command.after, limit=min(command.limit, MAX_LIMIT), unread=command.unread
    )
    return respond(result)


async def post_notifications_read(request: web.Request) -> web.Response:
    user = _user(request.match_info["user"])
    body = await _json_body(request)
    command: NotificationsRead = _command({"op": "notifications.read", **body})
    count = await _node(request).notices.mark_read(user, ids=command.ids, up_to=command.up_to)
    return respond({"unread_count": count})


async def post_disconnect(request: web.Request) -> web.Response:
    user = _user(request.match_info["user"])
    body = await _json_body(request, required=False)
    reason = body.get("reason", "disconnected by the server")
    if not isinstance(reason, str):
        raise _bad("'reason' must be a string")
    await _node(request).membership.disconnect_user(user, reason[:120])
    return _no_content()


async def openapi(request: web.Request) -> web.Response:
    return respond(openapi_document())


# Operations ----------------------------------------------------------------------------


async def healthz(request: web.Request) -> web.Response:
    node = _node(request)
    return respond({"status": "draining" if node.draining else "ok", "instance": node.instance_id})


async def readyz(request: web.Request) -> web.Response:
    node = _node(request)
    checks = await node.ready()
    ready = all(state == "ok" for state in checks.values()) and not node.draining
    body: dict[str, Any] = {"ready": ready, "checks": checks}
    return respond(body, status=200 if ready else 503)


async def metrics(request: web.Request) -> web.Response:
    response = web.Response(body=_node(request).metrics.render())
    response.headers["Content-Type"] = CONTENT_TYPE
    return response


def add_routes(app: web.Application) -> None:
    api = "/api/v1"
    app.router.add_routes(
        [
            web.post(f"{api}/rooms/{{room}}/messages", post_message),
            web.get(f"{api}/rooms/{{room}}/messages", get_messages),
            web.put(f"{api}/rooms/{{room}}/members/{{user}}", put_member),
            web.delete(f"{api}/rooms/{{room}}/members/{{user}}", delete_member),
            web.get(f"{api}/rooms/{{room}}/members", get_members),
            web.get(f"{api}/rooms/{{room}}/presence", get_presence),
            web.put(f"{api}/users/{{user}}/following/{{target}}", put_following),
            web.delete(f"{api}/users/{{user}}/following/{{target}}", delete_following),
            web.post(f"{api}/notifications", post_notification),
            web.get(f"{api}/users/{{user}}/notifications", get_notifications),
            web.post(f"{api}/users/{{user}}/notifications/read", post_notifications_read),
            web.post(f"{api}/users/{{user}}/disconnect", post_disconnect),
            web.get(f"{api}/openapi.json", openapi),
            web.get("/healthz", healthz),
            web.get("/readyz", readyz),
            web.get("/metrics", metrics),
        ]
    )


__all__ = ["STATUS", "add_routes", "api_errors"]
