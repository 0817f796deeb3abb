"""Each scenario, small, against a real server (and Socket.IO against python-socketio):
the figures add up and nothing is lost."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.contenders import start_peer
from loadtest.chat import ChatOptions, run_chat
from loadtest.connect import ConnectOptions, run_connect
from loadtest.context import Context
from loadtest.fanout import FanoutOptions, run_fanout
from loadtest.idle import IdleOptions, run_idle
from loadtest.notify import NotifyOptions, run_notify
from loadtest.progress import Progress
from loadtest.target import SOCKETIO, Target, loopback_sources, normalize_url
from loadtest.tokens import TokenSource
from tests.server import ROOT, SECRET, SERVICE_KEY, ServerProcess

QUIET = {"REALTIME_SERVER_LOG_LEVEL": "warning"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = ServerProcess(tmp_path_factory.mktemp("loadtest"), env=QUIET)
    process.start()
    yield process
    process.stop()


def context_for(url: str, pid: int | None, protocol: str = "realtime", procs: int = 2) -> Context:
    urls = (normalize_url(url, protocol),)
    target = Target(
        urls=urls,
        tokens=TokenSource(secret=SECRET),
        protocol=protocol,
        service_key=SERVICE_KEY,
        sources=loopback_sources(urls),
    )
    return Context(target, procs, (pid,) if pid else (), Progress(enabled=False))


def context(server: ServerProcess, procs: int = 2) -> Context:
    assert server.process is not None
    return context_for(server.ws_url, server.process.pid, procs=procs)


async def test_fanout(server: ServerProcess) -> None:
    options = FanoutOptions(subscribers=60, rate=60, duration=2, drain=5)
    report = await run_fanout(context(server), options)
    assert report["subscribers"] == 60
    assert report["publishers"] == 2  # 60/s is over one connection's rate limit
    assert report["acknowledged"] == report["published"] == 120
    assert report["deliveries"] == report["expected_deliveries"] == 120 * 60
    assert (report["lost"], report["duplicated"], report["reordered"]) == (0, 0, 0)
    assert 0 < report["latency_ms"]["p50"] <= report["latency_ms"]["max"]
    assert report["frames_per_read"] > 0.5  # about one: 60 frames/s per socket
    generator = report["generator"]
    assert [p["name"] for p in generator["processes"]] == ["parent", "p0", "p1"]
    assert generator["us_per_delivery"] > 0
    assert report["server"]["us_per_delivery"] > 0


async def test_idle(server: ServerProcess) -> None:
    report = await run_idle(context(server), IdleOptions(connections=100, settle=0.5, hold=0.5))
    assert report["connections"] == 100
    assert "connect_failures" not in report and "closed_by_server" not in report
    assert report["server_rss_after_mb"] >= report["server_rss_before_mb"] - 5
    assert "bytes_per_connection" in report


async def test_chat_with_room_tokens(server: ServerProcess) -> None:
    options = ChatOptions(rooms=10, rate=5, duration=2, drain=5)
    report = await run_chat(context(server), options)
    assert report["members"] == 20
    assert report["acknowledged"] == report["sent"] == 10 * 2 * 5 * 2
    assert report["deliveries"] == report["acknowledged"]  # each to the other member
    assert (report["lost"], report["duplicated"], report["reordered"]) == (0, 0, 0)
    assert report["ack_latency_ms"]["p50"] > 0


async def test_chat_with_rest_membership(server: ServerProcess) -> None:
    options = ChatOptions(rooms=4, rate=5, duration=1, drain=5, membership="rest")
    report = await run_chat(context(server, procs=1), options)
    assert report["members"] == 8
    assert "membership_failures" not in report
    assert report["acknowledged"] == report["sent"] == 40
    assert report["lost"] == 0


async def test_notify(server: ServerProcess) -> None:
    options = NotifyOptions(followers=40, online=10, notifications=3, in_flight=2)
    report = await run_notify(context(server), options)
    assert report["follows_set_up"] == 40
    assert report["accepted"] == 3 and report["recipients"] == 120
    assert report["online_deliveries"] == report["online_expected"] == 30
    assert report["online_lost"] == report["online_duplicated"] == 0
    assert report["stored_check"] == {"sampled": 3, "complete": 3}
    assert report["recipients_per_s"] > 0


async def test_connect_then_reconnect_at_once(server: ServerProcess) -> None:
    report = await run_connect(context(server), ConnectOptions(clients=60, timeout=30))
    for phase in ("connect", "reconnect"):
        assert report[phase]["joined"] == 60
        assert report[phase]["never_joined"] == 0
        assert report[phase]["all_joined_s"] > 0


@contextlib.contextmanager
def restarted_on_exit(server: ServerProcess) -> Iterator[None]:
    """Start the server again (same port and data) whenever it exits."""
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            assert server.process is not None
            if server.process.poll() is not None:
                server.start()
            time.sleep(0.05)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


async def test_connect_through_a_restart(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path, env=QUIET)
    server.start()
    try:
        assert server.process is not None
        pid = server.process.pid
        options = ConnectOptions(
            clients=40, timeout=30, restart_command=f"kill -TERM {pid}", retry_interval=0.2
        )
        with restarted_on_exit(server):
            report = await run_connect(context(server), options)
        assert server.process.pid != pid
        restart = report["restart"]
        assert restart["restart_command"]["exit"] == 0
        assert restart["armed"] == restart["dropped"] == restart["joined"] == 40
        assert restart["all_joined_s"] > 0
    finally:
        server.stop()


@pytest.fixture(scope="module")
def socketio_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The benchmark's python-socketio peer: it speaks the events of realtime's /socket.io/."""
    workdir = tmp_path_factory.mktemp("socketio")
    args = ("--secret", SECRET)
    running = start_peer(workdir, "bench.peers.socketio_server", *args, ws_path="/", cpu=None)
    yield running.ws_url
    running.stop()


async def test_socketio_fanout_and_idle(socketio_server: str) -> None:
    sio = context_for(socketio_server, None, protocol=SOCKETIO)
    report = await run_fanout(sio, FanoutOptions(subscribers=20, rate=20, duration=1, drain=5))
    assert report["protocol"] == "socketio"
    assert report["acknowledged"] == report["published"] == 20
    assert report["deliveries"] == report["expected_deliveries"] == 20 * 20
    assert (report["lost"], report["duplicated"], report["reordered"]) == (0, 0, 0)
    idle = await run_idle(sio, IdleOptions(connections=20, settle=0.2))
    assert idle["connections"] == 20


def test_the_command_line(server: ServerProcess, tmp_path: Path) -> None:
    out = tmp_path / "fanout.json"
    command = [
        sys.executable,
        "-m",
        "loadtest",
        "fanout",
        "--url",
        f"ws://127.0.0.1:{server.port}",
        "--secret",
        SECRET,
        "-s",
        "20",
        "-r",
        "20",
        "-d",
        "1",
        "--out",
        str(out),
    ]
    done = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text())
    assert report == json.loads(done.stdout)
    assert report["deliveries"] == report["expected_deliveries"] == 400
    assert "delivered" in done.stderr  # the progress line
