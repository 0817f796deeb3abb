"""``python -m loadtest SCENARIO --url ws://HOST:PORT/ws --secret ... [options]``.

Scenarios: fanout, chat, notify, connect, idle (``SCENARIO --help`` for each).
Prints a live progress line on stderr, the figures as JSON on stdout, and writes
them to --out.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import uvloop

from .chat import ChatOptions, run_chat
from .connect import ConnectOptions, run_connect
from .context import Context
from .fanout import FanoutOptions, run_fanout
from .idle import IdleOptions, run_idle
from .notify import NotifyOptions, run_notify
from .probe import local_server_pids
from .progress import Progress
from .target import PER_SOURCE, REALTIME, SOCKETIO, Target, loopback_sources, normalize_url
from .tokens import TokenSource
from .workers import WorkerError, processes_for, raise_file_limit

if TYPE_CHECKING:
    from _typeshed import DataclassInstance


def _common(parser: argparse.ArgumentParser, protocols: bool) -> None:
    where = parser.add_argument_group("target")
    where.add_argument(
        "--url",
        required=True,
        action="append",
        help="ws://HOST:PORT[/ws]; repeat to spread clients over several instances",
    )
    if protocols:
        where.add_argument(
            "--protocol",
            choices=(REALTIME, SOCKETIO),
            default=REALTIME,
            help="realtime's protocol, or Socket.IO (Engine.IO v4 over WebSocket; the events "
            "of realtime's /socket.io/, with acks)",
        )
    where.add_argument("--secret", help="HS256 secret to mint user and room tokens with")
    where.add_argument(
        "--token-command", help="command printing a token; called with USER [ROOM] as arguments"
    )
    where.add_argument("--service-key", help="REST service key (chat --membership rest, notify)")
    where.add_argument(
        "--server-pid",
        type=int,
        action="append",
        help="server process(es) to measure (default: found by port when local; 0: none)",
    )
    generator = parser.add_argument_group("generator")
    generator.add_argument("--procs", "-p", type=int, default=1, help="generator processes")
    generator.add_argument(
        "--concurrency",
        type=int,
        default=100,
        help="connections each process opens at a time (default 100; connect: 0, all at once)",
    )
    generator.add_argument("--connect-timeout", type=float, default=10.0, help="seconds")
    generator.add_argument(
        "--source-addresses",
        default="auto",
        help="comma-separated local addresses to rotate, 'auto' (127.0.0.x on the loopback) "
        "or 'none'",
    )
    generator.add_argument(
        "--per-source",
        type=int,
        default=PER_SOURCE,
        help=f"connections per source address (default {PER_SOURCE})",
    )
    generator.add_argument("--out", type=Path, help="write the figures as JSON here")
    generator.add_argument("--quiet", "-q", action="store_true", help="no progress line")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m loadtest", description=__doc__)
    scenarios = parser.add_subparsers(dest="scenario", required=True)

    fanout = scenarios.add_parser("fanout", help="one room, S subscribers, publishers at rate R")
    fanout.add_argument("--subscribers", "-s", type=int, default=1000)
    fanout.add_argument("--rate", "-r", type=float, default=100.0, help="messages/s offered")
    fanout.add_argument("--duration", "-d", type=float, default=10.0, help="seconds")
    fanout.add_argument("--payload", type=int, default=100, help="bytes of each message body")
    fanout.add_argument(
        "--publishers",
        type=int,
        default=0,
        help="publisher connections (0: one per 40/s, at most 16 for an owned room)",
    )
    fanout.add_argument("--room", help="room to use (default: a fresh followers room, no presence)")
    fanout.add_argument("--drain", type=float, default=10.0, help="seconds to wait at the end")
    fanout.add_argument(
        "--read-interval",
        type=float,
        default=0.0,
        help="ms between reads of the subscriber sockets: frames queue up and one read "
        "takes several, for less generator CPU per delivery and up to that much added "
        "latency (default 0: read as soon as readable)",
    )
    _common(fanout, protocols=True)

    chat = scenarios.add_parser("chat", help="P swap rooms of two members chatting at rate r")
    chat.add_argument("--rooms", "-P", type=int, default=100)
    chat.add_argument("--rate", "-r", type=float, default=5.0, help="sends/s of each member")
    chat.add_argument("--duration", "-d", type=float, default=10.0, help="seconds")
    chat.add_argument("--payload", type=int, default=100, help="bytes of each message body")
    chat.add_argument(
        "--membership",
        choices=("token", "rest"),
        default="token",
        help="join with room tokens, or grant membership over REST first (--service-key)",
    )
    chat.add_argument(
        "--window", type=int, default=64, help="unacknowledged sends per member at most"
    )
    chat.add_argument("--drain", type=float, default=10.0, help="seconds to wait at the end")
    _common(chat, protocols=False)

    notify = scenarios.add_parser("notify", help="REST notifications to a user's F followers")
    notify.add_argument("--followers", "-F", type=int, default=1000)
    notify.add_argument("--online", "-O", type=int, default=100, help="followers connected")
    notify.add_argument("--notifications", "-n", type=int, default=10)
    notify.add_argument("--in-flight", type=int, default=1, help="notification requests at a time")
    notify.add_argument(
        "--setup-concurrency", type=int, default=64, help="follow requests at a time"
    )
    notify.add_argument("--drain", type=float, default=30.0, help="seconds to wait at the end")
    _common(notify, protocols=False)

    connect = scenarios.add_parser("connect", help="N clients connecting at once, then again")
    connect.add_argument("--clients", "-n", type=int, default=1000)
    connect.add_argument("--room", help="room every client joins (default: a fresh followers room)")
    connect.add_argument(
        "--restart-command",
        help="shell command restarting the server between the phases (default: the "
        "generator closes every client and reconnects them at once)",
    )
    connect.add_argument(
        "--restart-timeout", type=float, default=120.0, help="seconds the command may take"
    )
    connect.add_argument("--timeout", type=float, default=120.0, help="seconds each phase may take")
    connect.add_argument(
        "--retry-interval",
        type=float,
        default=0.5,
        help="seconds: first backoff step with pacing (full jitter, doubling); without, the "
        "time between a failed attempt and the next (±50%%)",
    )
    connect.add_argument(
        "--no-pacing",
        dest="pacing",
        action="store_false",
        help="ignore the server's reconnect advice and Retry-After: reconnect at once",
    )
    connect.add_argument(
        "--publish-rate",
        type=float,
        default=0.0,
        help="messages/s published to the room through phase 2; every client must get each",
    )
    connect.add_argument(
        "--publish-url",
        help="where the publisher connects (an instance the restart command spares; "
        "default: the first --url)",
    )
    _common(connect, protocols=False)

    idle = scenarios.add_parser("idle", help="N idle joined connections: memory per connection")
    idle.add_argument("--connections", "-n", type=int, default=5000)
    idle.add_argument(
        "--rooms",
        type=int,
        default=1,
        help="fresh swap rooms to deal the connections to (default 1)",
    )
    idle.add_argument("--room", help="one room every connection joins (instead of --rooms)")
    idle.add_argument("--settle", type=float, default=3.0, help="seconds before reading memory")
    idle.add_argument("--hold", type=float, default=0.0, help="seconds to hold them afterwards")
    _common(idle, protocols=True)
    # The concurrency default suits a connect storm differently: all at once.
    connect.set_defaults(concurrency=0)
    return parser


Opts = TypeVar("Opts", bound="DataclassInstance")
Report = Coroutine[Any, Any, dict[str, Any]]


def options(cls: type[Opts], args: argparse.Namespace, **overrides: Any) -> Opts:
    """A scenario's options from the command line (each flag is named as its field)."""
    names = [f.name for f in dataclasses.fields(cls)]
    values = {name: getattr(args, name) for name in names if hasattr(args, name)}
    return cls(**{**values, **overrides})


def _fanout(context: Context, args: argparse.Namespace) -> Report:
    read_interval = args.read_interval / 1000
    return run_fanout(context, options(FanoutOptions, args, read_interval=read_interval))


def _chat(context: Context, args: argparse.Namespace) -> Report:
    if args.membership == "rest" and not args.service_key:
        raise SystemExit("--membership rest needs --service-key")
    return run_chat(context, options(ChatOptions, args))


def _notify(context: Context, args: argparse.Namespace) -> Report:
    if not args.service_key:
        raise SystemExit("notify needs --service-key")
    online = min(args.online, args.followers)
    return run_notify(context, options(NotifyOptions, args, online=online))


def _connect(context: Context, args: argparse.Namespace) -> Report:
    return run_connect(context, options(ConnectOptions, args))


def _idle(context: Context, args: argparse.Namespace) -> Report:
    return run_idle(context, options(IdleOptions, args))


SCENARIOS: dict[str, tuple[Callable[[Context, argparse.Namespace], Report], str]] = {
    "fanout": (_fanout, "subscribers"),
    "chat": (_chat, "rooms"),
    "notify": (_notify, "online"),
    "connect": (_connect, "clients"),
    "idle": (_idle, "connections"),
}


def _connections(args: argparse.Namespace) -> int:
    """Connections the scenario holds, to size the processes by their file limit."""
    if args.scenario == "chat":
        return int(args.rooms) * 2
    return int(getattr(args, SCENARIOS[args.scenario][1]))


def make_context(args: argparse.Namespace) -> Context:
    protocol = getattr(args, "protocol", REALTIME)
    try:
        urls = tuple(normalize_url(url, protocol) for url in args.url)
    except ValueError as error:
        raise SystemExit(str(error)) from None
    tokens = TokenSource(secret=args.secret, command=args.token_command)
    if protocol == REALTIME and not tokens.configured:
        raise SystemExit("give --secret or --token-command")
    if args.source_addresses == "auto":
        sources = loopback_sources(urls)
    elif args.source_addresses == "none":
        sources = ()
    else:
        sources = tuple(a.strip() for a in args.source_addresses.split(",") if a.strip())
    target = Target(
        urls=urls,
        tokens=tokens,
        protocol=protocol,
        service_key=args.service_key,
        connect_timeout=args.connect_timeout,
        sources=sources,
        per_source=args.per_source,
    )
    if args.server_pid:
        server_pids = tuple(p for p in args.server_pid if p)
    else:
        server_pids = local_server_pids(list(urls))
    progress = Progress(enabled=not args.quiet)
    procs = processes_for(_connections(args), args.procs)
    if procs != args.procs:
        progress.note(f"using {procs} processes: one holds at most its open-file limit")
    concurrency = args.concurrency or 1_000_000
    return Context(target, procs, server_pids, progress, concurrency)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    raise_file_limit()
    context = make_context(args)
    run, _ = SCENARIOS[args.scenario]
    try:
        report: dict[str, Any] = uvloop.run(run(context, args))
    except WorkerError as error:
        context.progress.done()
        print(f"loadtest {args.scenario} failed: {error}", file=sys.stderr)
        return 1
    context.progress.done()
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0
