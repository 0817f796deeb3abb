"""The OpenAPI 3.1 description of the REST API, served at /api/v1/openapi.json."""

from __future__ import annotations

from functools import cache
from typing import Any

from protocol.rooms import ROOM_PATTERN

USER_PATTERN = "^[A-Za-z0-9_.:-]{1,128}$"
_ANY_JSON = (
    "Any JSON value, kept exactly: integers from -2**63 to 2**64-1 (larger ones are refused)."
)


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_ERRORS = {
    "400": {"$ref": "#/components/responses/BadRequest"},
    "401": {"$ref": "#/components/responses/Unauthorized"},
    "503": {"$ref": "#/components/responses/Unavailable"},
}

_ROOM = {
    "name": "room",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": f"^{ROOM_PATTERN}$"},
    "description": "Room name, namespace:key (e.g. swap:123).",
}
_USER = {
    "name": "user",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": USER_PATTERN},
}
_TARGET = {**_USER, "name": "target"}


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "schema": schema,
        "description": description,
    }


_PAGE = [
    _query("before", {"type": "integer", "minimum": 1}, "Messages just before this seq."),
    _query("after", {"type": "integer", "minimum": 0}, "Messages just after this seq."),
    _query(
        "limit",
        {"type": "integer", "minimum": 1, "default": 50},
        "At most this many (capped at 200).",
    ),
]


def _operation(summary: str, responses: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"summary": summary, "responses": {**responses, **_ERRORS}, **extra}


@cache
def openapi_document() -> dict[str, Any]:
    no_content = {"204": {"description": "Done."}}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "realtime REST API",
            "version": "1",
            "description": "Publish, notify, manage membership and the follow graph, read "
            "history and presence, and disconnect users. Every call but this document "
            "needs `Authorization: Bearer <service key>`.",
        },
        "security": [{"serviceKey": []}],
        "paths": {
            "/api/v1/rooms/{room}/messages": {
                "parameters": [_ROOM],
                "post": _operation(
                    "Publish a message to a room (stored when the namespace keeps history).",
                    {
                        "201": _json(_ref("SendResult"), "Stored and published."),
                        "404": {"$ref": "#/components/responses/NotFound"},
                        "413": {"$ref": "#/components/responses/TooLarge"},
                    },
                    requestBody={
                        "required": True,
                        "content": {"application/json": {"schema": _ref("PublishRequest")}},
                    },
                ),
                "get": _operation(
                    "Read a room's history, ascending by seq.",
                    {"200": _json(_ref("HistoryPage"), "A page of history.")},
                    parameters=_PAGE,
                ),
            },
            "/api/v1/rooms/{room}/members/{user}": {
                "parameters": [_ROOM, _USER],
                "put": _operation("Let the user join the room (joined push to them).", no_content),
                "delete": _operation(
                    "Revoke membership; the user's connections leave (left push).", no_content
                ),
            },
            "/api/v1/rooms/{room}/members": {
                "parameters": [_ROOM],
                "get": _operation(
                    "Members of the room.", {"200": _json(_ref("Users"), "Members.")}
                ),
            },
            "/api/v1/rooms/{room}/presence": {
                "parameters": [_ROOM],
                "get": _operation(
                    "Users present in the room.", {"200": _json(_ref("Users"), "Present users.")}
                ),
            },
            "/api/v1/users/{user}/following/{target}": {
                "parameters": [_USER, _TARGET],
                "put": _operation("The user now follows the target.", no_content),
                "delete": _operation("The user no longer follows the target.", no_content),
            },
            "/api/v1/notifications": {
                "post": _operation(
                    "Store a notification for listed users or for all followers of a user, "
                    "and push it live.",
                    {
                        "202": _json(
                            {
                                "type": "object",
                                "required": ["recipients"],
                                "properties": {"recipients": {"type": "integer"}},
                            },
                            "Stored for this many recipients.",
                        ),
                        "413": {"$ref": "#/components/responses/TooLarge"},
                    },
                    requestBody={
                        "required": True,
                        "content": {"application/json": {"schema": _ref("NotifyRequest")}},
                    },
                ),
            },
            "/api/v1/users/{user}/notifications": {
                "parameters": [_USER],
                "get": _operation(
                    "The user's notifications, ascending by id.",
                    {"200": _json(_ref("NotificationPage"), "Notifications.")},
                    parameters=[
                        _query(
                            "after",
                            {"type": "integer", "minimum": 0},
                            "Only ids greater than this; without it, the latest.",
                        ),
                        _query(
                            "limit",
                            {"type": "integer", "minimum": 1, "default": 50},
                            "At most this many (capped at 200).",
                        ),
                        _query("unread", {"type": "boolean"}, "Only unread ones."),
                    ],
                ),
            },
            "/api/v1/users/{user}/notifications/read": {
                "parameters": [_USER],
                "post": _operation(
                    "Mark notifications read, by ids or up to an id.",
                    {
                        "200": _json(
                            {"type": "object", "properties": {"unread_count": {"type": "integer"}}},
                            "The unread count after marking.",
                        )
                    },
                    requestBody={
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "properties": {
                                        "ids": {"type": "array", "items": {"type": "integer"}},
                                        "up_to": {"type": "integer"},
                                    },
                                }
                            }
                        },
                    },
                ),
            },
            "/api/v1/users/{user}/disconnect": {
                "parameters": [_USER],
                "post": _operation(
                    "Close every connection of the user on every instance (close 4004).",
                    no_content,
                    requestBody={
                        "required": False,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "properties": {"reason": {"type": "string"}},
                                }
                            }
                        },
                    },
                ),
            },
            "/healthz": {
                "get": {
                    "summary": "200 while the process serves.",
                    "security": [],
                    "responses": {
                        "200": _json(
                            {
                                "type": "object",
                                "properties": {
                                    "status": {"type": "string", "enum": ["ok", "draining"]},
                                    "instance": {"type": "string"},
                                },
                            },
                            "Serving.",
                        )
                    },
                },
            },
            "/readyz": {
                "get": {
                    "summary": "200 when storage and broker answer, else 503.",
                    "security": [],
                    "responses": {
                        status: _json(
                            {
                                "type": "object",
                                "properties": {
                                    "ready": {"type": "boolean"},
                                    "checks": {
                                        "type": "object",
                                        "additionalProperties": {"type": "string"},
                                    },
                                },
                            },
                            text,
                        )
                        for status, text in (("200", "Ready."), ("503", "Not ready."))
                    },
                },
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics (text format).",
                    "security": [],
                    "responses": {
                        "200": {"description": "Prometheus text.", "content": {"text/plain": {}}}
                    },
                },
            },
            "/api/v1/openapi.json": {
                "get": {
                    "summary": "This document.",
                    "security": [],
                    "responses": {"200": {"description": "OpenAPI 3.1 JSON."}},
                },
            },
        },
        "components": {
            "securitySchemes": {"serviceKey": {"type": "http", "scheme": "bearer"}},
            "responses": {
                name: _json(_ref("Error"), text)
                for name, text in {
                    "BadRequest": "Invalid input (code bad_request).",
                    "Unauthorized": "Missing or wrong service key (code unauthorized).",
                    "NotFound": "Unknown namespace (code not_found).",
                    "TooLarge": "Body above the namespace's limit (code too_large).",
                    "Unavailable": "Storage or broker down; nothing was done (code unavailable).",
                }.items()
            },
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {
                        "error": {
                            "type": "object",
                            "required": ["code", "message"],
                            "properties": {
                                "code": {
                                    "type": "string",
                                    "enum": [
                                        "bad_request",
                                        "unauthorized",
                                        "forbidden",
                                        "not_found",
                                        "too_large",
                                        "rate_limited",
                                        "unavailable",
                                        "internal",
                                    ],
                                },
                                "message": {"type": "string"},
                            },
                        }
                    },
                },
                "PublishRequest": {
                    "type": "object",
                    "required": ["body"],
                    "properties": {
                        "body": {"description": _ANY_JSON},
                        "user": {
                            "type": "string",
                            "pattern": USER_PATTERN,
                            "description": "Sender; the push's user is null without it.",
                        },
                        "client_id": {
                            "type": "string",
                            "maxLength": 64,
                            "description": "Idempotency key.",
                        },
                    },
                },
                "SendResult": {
                    "type": "object",
                    "required": ["room", "seq", "ts"],
                    "properties": {
                        "room": {"type": "string"},
                        "seq": {"type": ["integer", "null"]},
                        "ts": {"type": "integer", "description": "ms since the Unix epoch"},
                        "duplicate": {"type": "boolean"},
                    },
                },
                "Message": {
                    "type": "object",
                    "required": ["room", "seq", "user", "body", "ts"],
                    "properties": {
                        "room": {"type": "string"},
                        "seq": {"type": "integer"},
                        "user": {"type": ["string", "null"]},
                        "body": {},
                        "ts": {"type": "integer"},
                        "client_id": {"type": "string"},
                    },
                },
                "HistoryPage": {
                    "type": "object",
                    "required": ["messages", "more", "epoch"],
                    "properties": {
                        "messages": {"type": "array", "items": _ref("Message")},
                        "more": {"type": "boolean"},
                        "epoch": {"type": "string"},
                    },
                },
                "Users": {
                    "type": "object",
                    "required": ["users"],
                    "properties": {"users": {"type": "array", "items": {"type": "string"}}},
                },
                "NotifyRequest": {
                    "type": "object",
                    "required": ["type"],
                    "properties": {
                        "to": {
                            "type": "array",
                            "items": {"type": "string", "pattern": USER_PATTERN},
                        },
                        "followers_of": {"type": "string", "pattern": USER_PATTERN},
                        "type": {
                            "type": "string",
                            "maxLength": 64,
                            "description": "like, comment, follow, mention, ...",
                        },
                        "data": {"description": _ANY_JSON},
                        "actor": {"type": "string", "pattern": USER_PATTERN},
                    },
                },
                "Notification": {
                    "type": "object",
                    "required": ["id", "type", "data", "actor", "ts", "read"],
                    "properties": {
                        "id": {"type": "integer"},
                        "type": {"type": "string"},
                        "data": {},
                        "actor": {"type": ["string", "null"]},
                        "ts": {"type": "integer"},
                        "read": {"type": "boolean"},
                    },
                },
                "NotificationPage": {
                    "type": "object",
                    "required": ["items", "unread_count"],
                    "properties": {
                        "items": {"type": "array", "items": _ref("Notification")},
                        "unread_count": {"type": "integer"},
                    },
                },
            },
        },
    }
