"""The aiohttp application: routes, and the lifecycle of the node and its seams.

Start: open the store, migrate, start the broker, start the node. SIGTERM
(``on_shutdown``): drain, closing connections with 1012 after their command in
flight. Cleanup: close the node, then presence, the broker and the store, in that order.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from aiohttp import web

from storage import create_store

from .app_keys import NODE
from .broker import Broker
from .broker_memory import MemoryBroker
from .config import ServerSettings, Settings
from .demo import add_demo_routes
from .errors import json_error
from .node import Node
from .presence import Presence
from .presence_memory import MemoryPresence
from .rest import Handler, add_routes, api_errors
from .sio_http import socketio_endpoint
from .ws import aiohttp_websocket

log = logging.getLogger(__name__)
access_log = logging.getLogger("realtime.access")


def create_seams(settings: Settings, owner: str) -> tuple[Broker, Presence]:
    """The broker and presence chosen by ``broker.url``."""
    if not settings.broker.url:
        return MemoryBroker(), MemoryPresence()
    from .redis_seams import create_redis_seams

    return create_redis_seams(settings, owner)


def create_app(settings: Settings) -> web.Application:
    app = web.Application(
        client_max_size=settings.server.max_request_bytes,
        middlewares=[observe_requests, api_errors, read_body_in_time],
    )
    # Upgrades on a kept-alive HTTP connection; fresh ones never reach aiohttp.
    app.router.add_get("/ws", aiohttp_websocket)
    # Socket.IO: Engine.IO's polling (and upgrades on kept-alive connections).
    app.router.add_route("*", "/socket.io/", socketio_endpoint)
    add_routes(app)
    add_demo_routes(app, settings)  # only with demo.enabled
    app.cleanup_ctx.append(_lifecycle(settings))
    app.on_shutdown.append(_drain)
    return app


def http_options(settings: ServerSettings) -> dict[str, Any]:
    """aiohttp's own limits on an HTTP connection (``listener.py`` bounds the first
    request's head; ``read_body_in_time`` every body)."""
    return {
        # Idle between requests; also bounds the head of every request after the first.
        "keepalive_timeout": settings.keepalive_timeout,
        # How long the unread rest of a refused body is drained before closing.
        "lingering_time": settings.close_timeout,
        "max_line_size": 8190,
        "max_field_size": 8190,
        "max_headers": 128,
    }


@web.middleware
async def observe_requests(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Time every request aiohttp serves (by route, method and status) and, with
    ``server.access_log``, log it: method, path without the query, status, duration.
    Nothing from the headers (the service key) and no query string is logged."""
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as error:
        status = error.status
        raise
    except asyncio.CancelledError:
        status = 499  # the client went away first (nginx's code for it)
        raise
    finally:
        seconds = time.perf_counter() - started
        if status != 101:  # a WebSocket's life is no request's latency
            resource = request.match_info.route.resource
            route = resource.canonical if resource is not None else "unmatched"
            node = request.app[NODE]
            node.metrics.request_done(request.method, route, status, seconds)
            if node.settings.server.access_log:
                _log_access(request, status, seconds)


def _log_access(request: web.Request, status: int, seconds: float) -> None:
    duration_ms = round(seconds * 1000, 3)
    path = request.rel_url.raw_path  # as sent: percent-escapes stay escaped
    access_log.info(
        "%s %s %d %.1fms",
        request.method,
        path,
        status,
        duration_ms,
        extra={
            "method": request.method,
            "path": path,
            "status": status,
            "duration_ms": duration_ms,
            "remote": request.remote,
        },
    )


@web.middleware
async def read_body_in_time(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A request body must arrive within ``server.handshake_timeout``: a client
    dripping it is answered 408 and its connection closed."""
    if request.body_exists:
        timeout = request.app[NODE].settings.server.handshake_timeout
        try:
            async with asyncio.timeout(timeout):
                await request.read()  # kept: the handler's read() returns it
        except TimeoutError:
            response = json_error(408, "timeout", "request body not received in time")
            response.force_close()
            return response
    return await handler(request)


def _lifecycle(settings: Settings) -> Callable[[web.Application], AsyncIterator[None]]:
    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        store = create_store(
            settings.storage.dsn,
            timeout=settings.storage.timeout,
            pool_size=settings.storage.pool_size,
            sqlite_synchronous=settings.storage.sqlite_synchronous,
        )
        await store.open()
        try:
            applied = await store.migrate()
            if applied:
                log.info("applied migrations %s", applied)
            instance_id = settings.server.instance_id or secrets.token_hex(4)
            # This process, distinct from an earlier life of the same instance.
            owner = f"{instance_id}-{secrets.token_hex(4)}"
            broker, presence = create_seams(settings, owner)
            node = Node(settings, store, broker, presence, instance_id=instance_id)
            app[NODE] = node
            await node.start()
            log.info("instance %s ready", node.instance_id)
            try:
                yield
            finally:
                await node.close()
                # Presence first: it may share the broker's Redis client, and its
                # last removals and unregistering need that client open.
                await presence.close()
                await broker.close()
        finally:
            await store.close()

    return lifecycle


async def _drain(app: web.Application) -> None:
    await app[NODE].drain()
