"""The servers ``bench.compare`` puts side by side, each started fresh for every attempt.

A contender knows how to start one server process pinned to the server core and
which protocol the load generator must speak to it. Every process started here is
a child of this one and is killed by ``Running.stop`` (the caller guarantees it
runs, also on Ctrl-C).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.node import NodeUnavailable, node_with_packages
from tests.server import SECRET, ServerProcess
from tests.services import free_port

ROOT = Path(__file__).resolve().parent.parent
NODE_PEER = ROOT / "bench" / "peers" / "socketio-node"
SOCKETIO_PATH = "/socket.io/"
TWO_CPUS = (os.cpu_count() or 1) > 1
SERVER_CPU, GENERATOR_CPU = 0, 1
START_TIMEOUT = 30.0
START_TRIES = 3


def pinned(cpu: int | None) -> list[str]:
    """Command prefix pinning a process (and its children) to one CPU, when there are two."""
    return ["taskset", "-c", str(cpu)] if TWO_CPUS and cpu is not None else []


def pin_pid(pid: int, cpu: int) -> None:
    """Pin a running process, every thread of it, to one CPU."""
    if TWO_CPUS:
        subprocess.run(
            ["taskset", "-a", "-p", "-c", str(cpu), str(pid)], check=True, stdout=subprocess.DEVNULL
        )


@dataclass
class Running:
    """A started server: where the generator connects and whose CPU and memory count."""

    ws_url: str
    pid: int
    stop: Callable[[], None]


@dataclass(frozen=True)
class Contender:
    name: str
    protocol: str
    """What ``loadtest --protocol`` must speak: ``realtime`` or ``socketio``."""
    start: Callable[[Path], Running]
    """Start a fresh server whose files live under the given directory."""
    needs_redis: bool = False
    unavailable: Callable[[], str | None] = lambda: None
    """Why this contender cannot run here (None: it can), asked once before the run."""


# realtime --------------------------------------------------------------------------------

REALTIME_ENV = {
    "REALTIME_SERVER_LOG_LEVEL": "warning",
    # One publisher sends up to thousands of commands/s: the per-connection rate
    # limit protects a real deployment, here it would only throttle the load.
    "REALTIME_SERVER_RATE_LIMIT": "1000000",
    "REALTIME_SERVER_RATE_BURST": "1000000",
}


def start_realtime(
    workdir: Path, broker_url: str = "", ws_path: str = "/ws", cpu: int | None = SERVER_CPU
) -> Running:
    server = ServerProcess(workdir, broker_url=broker_url, env=REALTIME_ENV)
    server.command_prefix = pinned(cpu)
    try:
        server.start(timeout=START_TIMEOUT)
    except BaseException:  # Ctrl-C while waiting for it included: it must not outlive us
        server.kill()
        raise
    assert server.process is not None
    return Running(f"ws://127.0.0.1:{server.port}{ws_path}", server.process.pid, server.kill)


def realtime_socketio_missing() -> str | None:
    """Why realtime cannot be measured over Socket.IO: its /socket.io/ does not answer
    an Engine.IO handshake (not merged yet, say). Asks a throwaway, unpinned server."""
    with tempfile.TemporaryDirectory(prefix="sio-probe-") as tmp:
        server = ServerProcess(Path(tmp), env=REALTIME_ENV)
        try:
            server.start(timeout=START_TIMEOUT)
            url = f"{server.url}{SOCKETIO_PATH}?EIO=4&transport=polling"
            try:
                with urllib.request.urlopen(url, timeout=10) as response:
                    opened = response.read(1) == b"0"
            except urllib.error.HTTPError as error:
                return f"GET {SOCKETIO_PATH} answers {error.code}: no Socket.IO endpoint yet"
            return None if opened else f"GET {SOCKETIO_PATH} is no Engine.IO handshake"
        except (RuntimeError, OSError) as error:
            return f"probe server did not start: {error}"[:300]
        finally:
            server.kill()


# Peers (bench/peers) ---------------------------------------------------------------------


def start_peer(
    workdir: Path, module: str, *args: str, ws_path: str, cpu: int | None = SERVER_CPU
) -> Running:
    """``python -m MODULE --port P ARGS``, pinned to ``cpu``, once /healthz answers."""
    return start_command(workdir, [sys.executable, "-m", module], args, ws_path, cpu)


def start_node_peer(workdir: Path, cpu: int | None = SERVER_CPU) -> Running:
    """The Node Socket.IO peer (``npm ci`` first if its packages are not installed)."""
    node = node_with_packages(NODE_PEER)
    command = [node, str(NODE_PEER / "server.js")]
    return start_command(workdir, command, ("--secret", SECRET), SOCKETIO_PATH, cpu)


def node_missing() -> str | None:
    try:
        node_with_packages(NODE_PEER)
    except NodeUnavailable as error:
        return str(error)
    return None


def start_command(
    workdir: Path, command: Sequence[str], args: Sequence[str], ws_path: str, cpu: int | None
) -> Running:
    """``COMMAND --port P ARGS``, pinned to ``cpu``, once /healthz answers.

    The port is free when chosen but may be taken before the child binds it (on a
    busy loopback, by anyone): then it is tried again on another port.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    for attempt in range(START_TRIES):
        try:
            return _start_once(workdir, command, args, ws_path, cpu)
        except (OSError, RuntimeError) as error:
            if attempt == START_TRIES - 1 or "in use" not in str(error):
                raise
            time.sleep(1)
    raise AssertionError("unreachable")


def _start_once(
    workdir: Path, command: Sequence[str], args: Sequence[str], ws_path: str, cpu: int | None
) -> Running:
    port = free_port()
    log_path = workdir / "server.log"
    log_path.unlink(missing_ok=True)
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [*pinned(cpu), *command, "--port", str(port), *args],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    def stop() -> None:
        if process.poll() is None:
            process.kill()
            process.wait(10)

    try:
        wait_healthy(process, port, log_path)
    except BaseException:  # Ctrl-C while waiting for it included: it must not outlive us
        stop()
        raise
    return Running(f"ws://127.0.0.1:{port}{ws_path}", process.pid, stop)


def wait_healthy(process: subprocess.Popen[bytes], port: int, log_path: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"exited at start:\n{log_path.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(
        f"no answer on /healthz in {START_TIMEOUT}s:\n{log_path.read_text()[-2000:]}"
    )


def socketio_installed() -> bool:
    return importlib.util.find_spec("socketio") is not None


def socketio_missing() -> str | None:
    if socketio_installed():
        return None
    return "python-socketio is not installed (requirements-bench.txt)"


# The registry ----------------------------------------------------------------------------


def contenders(redis_url: Callable[[], str]) -> dict[str, Contender]:
    """Every known contender by name; ``redis_url`` starts the shared Redis when first asked."""
    socketio_module = "bench.peers.socketio_server"
    secret = ("--secret", SECRET)
    return {
        "realtime": Contender("realtime", "realtime", start_realtime),
        "realtime-redis": Contender(
            "realtime-redis",
            "realtime",
            lambda d: start_realtime(d, broker_url=redis_url()),
            needs_redis=True,
        ),
        "realtime-socketio": Contender(
            "realtime-socketio",
            "socketio",
            lambda d: start_realtime(d, ws_path=SOCKETIO_PATH),
            unavailable=realtime_socketio_missing,
        ),
        "socketio-node": Contender(
            "socketio-node", "socketio", start_node_peer, unavailable=node_missing
        ),
        "socketio": Contender(
            "socketio",
            "socketio",
            lambda d: start_peer(d, socketio_module, *secret, ws_path=SOCKETIO_PATH),
            unavailable=socketio_missing,
        ),
        "socketio-redis": Contender(
            "socketio-redis",
            "socketio",
            lambda d: start_peer(
                d, socketio_module, *secret, "--redis", redis_url(), ws_path=SOCKETIO_PATH
            ),
            needs_redis=True,
            unavailable=socketio_missing,
        ),
        "bare": Contender(
            "bare", "realtime", lambda d: start_peer(d, "bench.peers.bare_server", ws_path="/ws")
        ),
    }
