"""The REST API for the backend, under ``/api/v1/``, plus health, readiness and metrics.

``ROUTES`` declares every endpoint once; ``routes.py`` turns it into aiohttp routes
that read and check the inputs the handlers' signatures name, and ``openapi.py`` into
the document at ``/api/v1/openapi.json``. Every ``/api/v1`` call but the document
needs a service key. Limits are the WebSocket commands' own (``protocol``).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from functools import cache
from typing import Annotated, Any

import orjson
from aiohttp import web

from protocol import CommandError, ErrorCode
from protocol.commands import DEFAULT_LIMIT, MAX_LIMIT
from protocol.outgoing import HistoryResult, NotificationsResult, SendResult
from storage import Delivery

from . import http_log
from . import rest_types as rt
from .app_keys import NODE
from .errors import CODE_FOR_STATUS, STATUS, error_response, json_error
from .metrics import CONTENT_TYPE
from .node import Node
from .openapi import openapi_document
from .preferences import Preferences
from .rest_types import (
    ArchiveRequest,
    DisconnectRequest,
    Endpoint,
    HistoryQuery,
    Limit,
    NotificationId,
    NotifyRequest,
    PublishRequest,
    PushSubscriptionRequest,
    ReadRequest,
    RoomName,
    SeenRequest,
    Seq,
    UserId,
)
from .routes import InBody, InPath, InQuery, Reply, Route, respond
from .routes import add_routes as add_route_table
from .schema import Doc

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
API = "/api/v1"
OPENAPI_PATH = f"{API}/openapi.json"
VAPID_KEY_PATH = f"{API}/push/vapid-public-key"
# Under /api/v1 but public: what a browser page may read without a service key.
PUBLIC_PATHS = frozenset({OPENAPI_PATH, VAPID_KEY_PATH})
MAX_REASON = 120
DEFAULT_REASON = "disconnected by the server"


@web.middleware
async def api_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Service-key check and JSON errors for everything under /api/v1."""
    if not request.path.startswith("/api/"):
        return await handler(request)
    node = request.app[NODE]
    if request.path not in PUBLIC_PATHS and not node.auth.is_service_key(
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
        response = json_error(error.status, str(code), error.reason)
        allow = error.headers.get("Allow")
        if allow is not None:  # a 405 says what the path takes (RFC 9110)
            response.headers["Allow"] = allow
        return response


# Handlers: each parameter after the node is an input, read and checked by its type ------


async def post_message(
    node: Node, room: InPath[RoomName], body: InBody[PublishRequest]
) -> SendResult:
    # A retry with the same client_id answers like the first call (with duplicate: true).
    return await node.messages.publish(room, body.user, body.body, body.client_id)


async def get_messages(
    node: Node, room: InPath[RoomName], page: InQuery[HistoryQuery]
) -> HistoryResult:
    return await node.messages.history(
        None, room, before=page.before, after=page.after, limit=min(page.limit, MAX_LIMIT)
    )


async def put_member(node: Node, room: InPath[RoomName], user: InPath[UserId]) -> None:
    node.policy.resolve(room)
    await node.membership.add_member(room, user)


async def delete_member(node: Node, room: InPath[RoomName], user: InPath[UserId]) -> None:
    node.policy.resolve(room)
    await node.membership.remove_member(room, user)


async def get_members(node: Node, room: InPath[RoomName]) -> dict[str, Any]:
    node.policy.resolve(room)
    return {"users": await node.membership.members(room)}


async def get_presence(node: Node, room: InPath[RoomName]) -> dict[str, Any]:
    return {"users": await node.joins.presence(None, room)}


async def put_following(node: Node, user: InPath[UserId], target: InPath[UserId]) -> None:
    if user == target:
        # Forbidden, not invalid: the request is well formed, the rule refuses it.
        raise CommandError(ErrorCode.FORBIDDEN, "a user cannot follow themselves")
    await node.membership.follow(user, target)


async def delete_following(node: Node, user: InPath[UserId], target: InPath[UserId]) -> None:
    await node.membership.unfollow(user, target)


async def post_notification(node: Node, body: InBody[NotifyRequest]) -> dict[str, Any]:
    limit = node.settings.namespaces["user"].max_body_bytes
    if len(body.data.encode()) > limit:
        raise CommandError(ErrorCode.TOO_LARGE, "'data' is larger than the user namespace allows")
    recipients = await node.notices.notify(
        to=body.to,
        followers_of=body.followers_of,
        type=body.type,
        data_json=body.data,
        actor=body.actor,
        dedupe_key=body.dedupe_key,
    )
    return {"recipients": recipients}


async def get_notifications(
    node: Node,
    user: InPath[UserId],
    after: InQuery[Annotated[Seq | None, Doc("Only ids above this; else the latest.")]] = None,
    limit: InQuery[Limit] = DEFAULT_LIMIT,
    unread: InQuery[Annotated[bool, Doc("Only unread ones.")]] = False,
    archived: InQuery[Annotated[bool, Doc("The archived ones (and only those).")]] = False,
) -> NotificationsResult:
    return await node.notices.list(
        user, after=after, limit=min(limit, MAX_LIMIT), unread=unread, archived=archived
    )


async def post_notifications_read(
    node: Node, user: InPath[UserId], body: InBody[ReadRequest]
) -> dict[str, Any]:
    count = await node.notices.mark_read(user, ids=body.ids, up_to=body.up_to)
    return {"unread_count": count}


async def put_push_subscription(
    node: Node, user: InPath[UserId], body: InBody[PushSubscriptionRequest]
) -> None:
    await node.push.subscribe(user, body.endpoint, body.keys.p256dh, body.keys.auth)


async def delete_push_subscription(
    node: Node, user: InPath[UserId], endpoint: InQuery[Endpoint]
) -> None:
    await node.push.unsubscribe(user, endpoint)


async def get_push_subscriptions(node: Node, user: InPath[UserId]) -> dict[str, Any]:
    subscriptions = await node.push.list(user)
    return {
        "subscriptions": [
            {
                "endpoint": s.endpoint,
                "keys": {"p256dh": s.p256dh, "auth": s.auth},
                "created_at": s.created_at,
            }
            for s in subscriptions
        ]
    }


async def get_vapid_public_key(node: Node) -> dict[str, Any]:
    return {"public_key": node.push.public_key}


async def post_notifications_read_all(node: Node, user: InPath[UserId]) -> dict[str, Any]:
    return {"unread_count": await node.notices.mark_all_read(user)}


async def put_notification_read(
    node: Node, user: InPath[UserId], id: InPath[NotificationId]
) -> None:
    await node.notices.mark_one_read(user, id)


async def post_notifications_seen(
    node: Node, user: InPath[UserId], body: InBody[SeenRequest]
) -> dict[str, Any]:
    return {"unseen_count": await node.notices.mark_seen(user, up_to=body.up_to)}


async def post_notifications_archive(
    node: Node, user: InPath[UserId], body: InBody[ArchiveRequest]
) -> dict[str, Any]:
    count = await node.notices.archive(user, body.ids, archived=body.archived)
    return {"unread_count": count}


async def get_preferences(node: Node, user: InPath[UserId]) -> dict[str, Any]:
    return (await node.notices.preferences(user)).to_wire()


async def put_preferences(
    node: Node, user: InPath[UserId], body: InBody[Preferences]
) -> dict[str, Any]:
    return (await node.notices.set_preferences(user, body)).to_wire()


async def get_deliveries(
    node: Node,
    state: InQuery[
        Annotated[rt.DeliveryState | None, Doc("Only jobs in this state (dead: the dead letters).")]
    ] = None,
    user: InQuery[Annotated[UserId | None, Doc("Only this user's jobs.")]] = None,
    after: InQuery[Annotated[Seq | None, Doc("Only ids above this (paging).")]] = None,
    limit: InQuery[Limit] = DEFAULT_LIMIT,
) -> dict[str, Any]:
    found = await node.outbox.deliveries(
        user=user, state=state, limit=min(limit, MAX_LIMIT), after=after
    )
    return {"deliveries": [_delivery(d) for d in found]}


async def post_delivery_retry(node: Node, id: InPath[rt.DeliveryId]) -> dict[str, Any]:
    return _delivery(await node.outbox.requeue(id))


def _delivery(job: Delivery) -> dict[str, Any]:
    return {
        "id": job.id,
        "user": job.user,
        "transport": job.transport,
        "notification_id": job.notification_id,
        "type": job.type,
        "data": orjson.Fragment(job.data),
        "actor": job.actor,
        "group_key": job.group_key,
        "created_at": job.created_at,
        "due_at": job.due_at,
        "state": job.state,
        "attempts": job.attempts,
        "leased_until": job.leased_until,
        "last_error": job.last_error,
        "finished_at": job.finished_at,
    }


NO_REASON = DisconnectRequest()


async def post_disconnect(
    node: Node, user: InPath[UserId], body: InBody[DisconnectRequest] = NO_REASON
) -> None:
    reason = DEFAULT_REASON if body.reason is None else body.reason
    await node.membership.disconnect_user(user, reason[:MAX_REASON])


async def get_openapi(node: Node) -> web.Response:
    return web.Response(body=_document(), content_type="application/json")


@cache
def _document() -> bytes:
    return orjson.dumps(openapi_document(ROUTES))


# Operations ----------------------------------------------------------------------------


async def healthz(node: Node) -> dict[str, Any]:
    return {"status": "draining" if node.draining else "ok", "instance": node.instance_id}


async def readyz(node: Node) -> web.Response:
    checks = await node.ready()
    ready = all(state == "ok" for state in checks.values()) and not node.draining
    body: dict[str, Any] = {"ready": ready, "checks": checks}
    return respond(body, status=200 if ready else 503)


async def metrics(node: Node) -> web.Response:
    response = web.Response(body=node.metrics.render())
    response.headers["Content-Type"] = CONTENT_TYPE
    return response


# The table -----------------------------------------------------------------------------

E = ErrorCode
NO_CONTENT = (Reply(204, "Done."),)
# Every /api/v1 call may find storage or the broker down; 401 comes with the service key.
ROOM = (E.BAD_REQUEST, E.NOT_FOUND, E.UNAVAILABLE)
USER = (E.BAD_REQUEST, E.UNAVAILABLE)
WITH_BODY = (E.BAD_REQUEST, E.TOO_LARGE, E.UNAVAILABLE)

ROUTES: tuple[Route, ...] = (
    Route(
        "POST",
        f"{API}/rooms/{{room}}/messages",
        post_message,
        "Publish a message to a room (stored when the namespace keeps history).",
        (Reply(201, "Stored and published.", rt.SendResult),),
        (*ROOM, E.TOO_LARGE),
    ),
    Route(
        "GET",
        f"{API}/rooms/{{room}}/messages",
        get_messages,
        "Read a room's history, ascending by seq.",
        (Reply(200, "A page of history.", rt.HistoryPage),),
        ROOM,
    ),
    Route(
        "PUT",
        f"{API}/rooms/{{room}}/members/{{user}}",
        put_member,
        "Let the user join the room (joined push to their connections).",
        NO_CONTENT,
        ROOM,
    ),
    Route(
        "DELETE",
        f"{API}/rooms/{{room}}/members/{{user}}",
        delete_member,
        "Revoke membership; the user's connections leave (left push).",
        NO_CONTENT,
        ROOM,
    ),
    Route(
        "GET",
        f"{API}/rooms/{{room}}/members",
        get_members,
        "Members of the room.",
        (Reply(200, "Members.", rt.Users),),
        ROOM,
    ),
    Route(
        "GET",
        f"{API}/rooms/{{room}}/presence",
        get_presence,
        "Users present in the room.",
        (Reply(200, "Present users.", rt.Users),),
        ROOM,
    ),
    Route(
        "PUT",
        f"{API}/users/{{user}}/following/{{target}}",
        put_following,
        "The user now follows the target (403 when they are the same user).",
        NO_CONTENT,
        (E.BAD_REQUEST, E.FORBIDDEN, E.UNAVAILABLE),
    ),
    Route(
        "DELETE",
        f"{API}/users/{{user}}/following/{{target}}",
        delete_following,
        "The user no longer follows the target.",
        NO_CONTENT,
        USER,
    ),
    Route(
        "POST",
        f"{API}/notifications",
        post_notification,
        "Store a notification for listed users or for all followers of a user, and push it live.",
        (Reply(202, "Stored for this many recipients.", rt.Recipients),),
        WITH_BODY,
    ),
    Route(
        "GET",
        f"{API}/users/{{user}}/notifications",
        get_notifications,
        "The user's notifications, ascending by id.",
        (Reply(200, "Notifications.", rt.NotificationPage),),
        USER,
    ),
    Route(
        "POST",
        f"{API}/users/{{user}}/notifications/read",
        post_notifications_read,
        "Mark notifications read, by ids or up to an id.",
        (Reply(200, "The unread count after marking.", rt.UnreadCount),),
        WITH_BODY,
    ),
    Route(
        "PUT",
        f"{API}/users/{{user}}/push-subscriptions",
        put_push_subscription,
        "Register a browser's Web Push subscription for the user (again: new keys, "
        "newest; 403 for http:// where not allowed).",
        NO_CONTENT,
        (*WITH_BODY, E.FORBIDDEN),
    ),
    Route(
        "DELETE",
        f"{API}/users/{{user}}/push-subscriptions",
        delete_push_subscription,
        "Remove the user's Web Push subscription at this endpoint.",
        NO_CONTENT,
        USER,
    ),
    Route(
        "GET",
        f"{API}/users/{{user}}/push-subscriptions",
        get_push_subscriptions,
        "The user's Web Push subscriptions.",
        (Reply(200, "Subscriptions.", rt.PushSubscriptions),),
        USER,
    ),
    Route(
        "GET",
        VAPID_KEY_PATH,
        get_vapid_public_key,
        "The VAPID public key pages subscribe with (404 while Web Push is off).",
        (Reply(200, "The key.", rt.VapidPublicKey),),
        (E.NOT_FOUND,),
        service_key=False,
    ),
    Route(
        "POST",
        f"{API}/users/{{user}}/notifications/read_all",
        post_notifications_read_all,
        "Mark every notification of the user read.",
        (Reply(200, "The unread count after marking.", rt.UnreadCount),),
        USER,
    ),
    Route(
        "PUT",
        f"{API}/users/{{user}}/notifications/{{id}}/read",
        put_notification_read,
        "Mark one notification read (404 when the user has no such notification).",
        NO_CONTENT,
        (E.BAD_REQUEST, E.NOT_FOUND, E.UNAVAILABLE),
    ),
    Route(
        "POST",
        f"{API}/users/{{user}}/notifications/seen",
        post_notifications_seen,
        "Mark every notification up to an id seen (the user opened the list).",
        (Reply(200, "The unseen count after marking.", rt.UnseenCount),),
        WITH_BODY,
    ),
    Route(
        "POST",
        f"{API}/users/{{user}}/notifications/archive",
        post_notifications_archive,
        "Archive notifications (left out of lists and counts unless asked), or bring them back.",
        (Reply(200, "The unread count after archiving.", rt.UnreadCount),),
        WITH_BODY,
    ),
    Route(
        "GET",
        f"{API}/users/{{user}}/preferences",
        get_preferences,
        "The user's notification preferences (the defaults until set).",
        (Reply(200, "The preferences document.", Preferences),),
        USER,
    ),
    Route(
        "PUT",
        f"{API}/users/{{user}}/preferences",
        put_preferences,
        "Replace the user's notification preferences; answers the document kept.",
        (Reply(200, "The preferences document.", Preferences),),
        WITH_BODY,
    ),
    Route(
        "GET",
        f"{API}/deliveries",
        get_deliveries,
        "The outbox's delivery jobs, ascending by id: by state (dead: the dead letters) and user.",
        (Reply(200, "Delivery jobs.", rt.Deliveries),),
        (E.BAD_REQUEST, E.UNAVAILABLE),
    ),
    Route(
        "POST",
        f"{API}/deliveries/{{id}}/retry",
        post_delivery_retry,
        "Requeue a dead delivery job: pending again, due now, attempts from zero "
        "(404 when there is no dead job with that id).",
        (Reply(200, "The job, requeued.", rt.DeliveryInfo),),
        (E.BAD_REQUEST, E.NOT_FOUND, E.UNAVAILABLE),
    ),
    Route(
        "POST",
        f"{API}/users/{{user}}/disconnect",
        post_disconnect,
        "Close every connection of the user on every instance (close 4004).",
        NO_CONTENT,
        WITH_BODY,
    ),
    Route(
        "GET",
        OPENAPI_PATH,
        get_openapi,
        "This document.",
        (Reply(200, "OpenAPI 3.1 JSON.", rt.OpenApiDocument),),
        service_key=False,
    ),
    Route(
        "GET",
        "/healthz",
        healthz,
        "200 while the process serves.",
        (Reply(200, "Serving.", rt.Health),),
        service_key=False,
    ),
    Route(
        "GET",
        "/readyz",
        readyz,
        "200 when storage and broker answer, else 503.",
        (Reply(200, "Ready.", rt.Readiness), Reply(503, "Not ready.", rt.Readiness)),
        service_key=False,
    ),
    Route(
        "GET",
        "/metrics",
        metrics,
        "Prometheus metrics (text format).",
        (Reply(200, "Prometheus text.", media="text/plain"),),
        service_key=False,
    ),
)


def add_routes(app: web.Application) -> None:
    add_route_table(app, ROUTES)
    http_log.install()


__all__ = ["ROUTES", "STATUS", "add_routes", "api_errors"]
