"""Command line: ``serve``, ``token``, ``migrate`` and ``vapid``.

realtime serve --config config.toml       (or: python -m realtime serve ...)
realtime token alice [--room swap:1] [--ttl 3600]
realtime migrate
realtime vapid --out vapid.pem [--force]
realtime --version
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import resource
import signal
import socket
import sys
import tomllib
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

import uvloop
from aiohttp import web

from storage import create_store

from .acceptor import Acceptor
from .app import create_app, http_options
from .app_keys import NODE
from .auth import USER_ID, Authenticator
from .config import ConfigError, Settings, load_settings
from .listener import Doorway, FirstRequest
from .logs import configure as configure_logging
from .outbound.templates import TemplateError
from .outbound.vapid import VapidKeyError, generate_key_file
from .ws import websocket_protocol

log = logging.getLogger("realtime")
DEFAULT_CONFIG = "config.toml"
DISTRIBUTION = "realtime"


def package_version() -> str:
    """The installed distribution's version, or the checkout's from its pyproject.toml."""
    package = Path(__file__).resolve().parent
    try:
        distribution = metadata.distribution(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        pass
    else:
        # Only if that distribution holds this very code (not another "realtime", nor
        # an installed copy shadowed by a checkout that runs with `python -m`).
        installed = Path(str(distribution.locate_file(f"{package.name}/__init__.py")))
        if installed.resolve() == package / "__init__.py":
            return distribution.version
    pyproject = package.parent / "pyproject.toml"
    try:
        version = tomllib.loads(pyproject.read_text())["project"]["version"]
    except (OSError, tomllib.TOMLDecodeError, KeyError, TypeError):
        return "unknown"
    return f"{version} (checkout)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="realtime", description=__doc__.split("\n")[0])
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run one instance")
    token = commands.add_parser("token", help="mint a token from the configured secret")
    token.add_argument("user")
    token.add_argument("--room", help="make it a room token for this room")
    token.add_argument("--ttl", type=int, help="seconds until it expires (default auth.token_ttl)")
    migrate = commands.add_parser("migrate", help="apply schema migrations and exit")
    for command in (serve, token, migrate):
        command.add_argument(
            "--config",
            help=f"settings file (default: {DEFAULT_CONFIG} when it exists)",
        )
    vapid = commands.add_parser(
        "vapid", help="make a VAPID key pair file for Web Push; print its public key"
    )
    vapid.add_argument("--out", required=True, help="the PEM file to write (mode 0600)")
    vapid.add_argument("--force", action="store_true", help="replace an existing file")
    args = parser.parse_args(argv)
    if args.command == "vapid":
        return _vapid(Path(args.out), force=args.force)
    try:
        settings = _settings(args.config, auth=args.command != "migrate")
    except ConfigError as error:
        print(f"configuration error: {error}", file=sys.stderr)
        return 2
    if args.command == "token":
        if not USER_ID.fullmatch(args.user):
            print("user must match [A-Za-z0-9_.:-]{1,128}", file=sys.stderr)
            return 2
        print(Authenticator(settings.auth).mint(args.user, room=args.room, ttl=args.ttl))
        return 0
    configure_logging(settings.server.log_level, settings.server.log_format)
    if args.command == "migrate":
        uvloop.run(_migrate(settings))
        return 0
    try:
        uvloop.run(serve_forever(settings))
    except CannotListen as error:
        print(f"realtime: {error}", file=sys.stderr)
        return 1
    except (VapidKeyError, TemplateError) as error:
        # A file a setting names, read at start-up: as plain as any other bad setting.
        print(f"configuration error: {error}", file=sys.stderr)
        return 2
    return 0


def _vapid(path: Path, *, force: bool) -> int:
    try:
        public_key = generate_key_file(path, force=force)
    except FileExistsError:
        print(f"{path} exists; --force replaces it", file=sys.stderr)
        return 1
    except OSError as error:
        print(f"cannot write {path}: {error.strerror}", file=sys.stderr)
        return 1
    print(f"wrote {path}; set webpush.vapid_private_key_file to it", file=sys.stderr)
    print(public_key)  # stdout: the applicationServerKey, for scripts
    return 0


def _settings(path: str | None, *, auth: bool) -> Settings:
    if path is None and Path(DEFAULT_CONFIG).exists():
        path = DEFAULT_CONFIG
    return load_settings(path, auth=auth)


async def _migrate(settings: Settings) -> None:
    store = create_store(settings.storage.dsn, timeout=settings.storage.timeout)
    await store.open()
    try:
        applied = await store.migrate()
    finally:
        await store.close()
    log.info("migrations applied: %s", applied or "none (schema is current)")


GC_THRESHOLDS = (5_000, 20, 20)
"""The collector's thresholds while serving (CPython's default: 700, 10, 10).

A command in flight (its future, task and message) lives for a store commit, a
few ms: with the default young-generation size it is usually caught alive and
promoted, and full collections followed every 1-2 s under 4,000 sends/s, each
walking every connection's objects (60-120 ms with 2,000 connections, all of it
latency for everyone). With these, short-lived objects die young and full
collections are rare: p99 send→ack fell from ~200 ms to ~70 ms at that load,
server CPU per send by a fifth."""


def _check_descriptors(unauthenticated: int) -> None:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if unauthenticated >= soft // 2:
        log.warning(
            "server.max_unauthenticated (%d with the spare places for health checks) is not "
            "well under the file descriptor limit (%d): a flood of unauthenticated "
            "connections could leave none for authenticated clients and /healthz",
            unauthenticated,
            soft,
        )


class CannotListen(Exception):
    """The port is taken (or the host unknown, or the port not ours to use)."""


class _Entrance:
    """The protocol of a new connection, known once the app has started (the socket
    is bound before, and accepts nothing until ``start_serving``)."""

    def __init__(self) -> None:
        self.protocol: Callable[[], asyncio.Protocol] | None = None

    def __call__(self) -> asyncio.Protocol:
        assert self.protocol is not None, "a connection was accepted before start-up"
        return self.protocol()


def _bind(host: str, port: int, factory: Callable[[], asyncio.Protocol]) -> Acceptor:
    """The listening sockets, bound but not yet accepting: taken first, so that a
    port in use stops start-up before the store is opened or "ready" is logged."""
    try:
        return Acceptor.bind(host, port, factory)
    except OSError as error:
        if isinstance(error, socket.gaierror) or not error.errno:
            reason = error.strerror or str(error)
        else:
            reason = os.strerror(error.errno)
        raise CannotListen(f"cannot listen on {host}:{port}: {reason}") from None


async def serve_forever(settings: Settings) -> None:
    """Serve until SIGTERM or SIGINT, then drain and exit.

    Raises ``CannotListen`` before anything starts when the port cannot be bound.
    """
    app = create_app(settings)
    entrance = _Entrance()
    listener = _bind(settings.server.host, settings.server.port, entrance)
    runner = web.AppRunner(
        app,
        handle_signals=False,
        access_log=None,
        shutdown_timeout=settings.server.shutdown_timeout,
        **http_options(settings.server),
    )
    try:
        await runner.setup()
    except BaseException:
        await listener.close()
        raise
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        http = runner.server
        assert http is not None
        node = app[NODE]
        _check_descriptors(node.admission.limit + node.admission.spare_limit)
        websocket = websocket_protocol(node)
        doorway = Doorway(
            node.admission, settings.server.handshake_timeout, settings.server.close_timeout
        )
        entrance.protocol = lambda: FirstRequest(http, websocket, doorway)
        listener.start()
        log.info("listening on http://%s:%d", settings.server.host, settings.server.port)
        # What start-up made (modules, settings, the app) lives as long as the process:
        # moved out of the collector's sight, every full collection, a pause for every
        # connection, has that much less to walk.
        gc.freeze()
        gc.set_threshold(*GC_THRESHOLDS)
        await stop.wait()
        log.info("stopping: draining connections")
    finally:
        await listener.close()  # accept nothing new; the drain closes what is open
        await runner.cleanup()
    log.info("stopped")
