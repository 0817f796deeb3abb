"""bench.compare's Socket.IO comparison: its contenders, the generator's Socket.IO mode
through each of them (small, unpinned), and the tables it prints.

The realtime column needs the server's /socket.io/ endpoint: its test skips, saying
so, while the server has none. The Node column's test skips without Node.js.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.compare import ALL_SERVERS, DEFAULT_SERVERS, available, parse
from bench.contenders import (
    SOCKETIO_PATH,
    Contender,
    Running,
    contenders,
    realtime_socketio_missing,
    start_node_peer,
    start_peer,
    start_realtime,
)
from bench.report import markdown
from bench.results import Attempt, Idle, Point
from loadtest.context import Context
from loadtest.fanout import FanoutOptions, run_fanout
from loadtest.idle import IdleOptions, run_idle
from loadtest.progress import Progress
from loadtest.target import SOCKETIO, Target, loopback_sources, normalize_url
from loadtest.tokens import TokenSource
from tests.server import SECRET

from .test_peers import node_peer_installed  # noqa: F401 - a fixture


def test_the_table_has_the_socketio_contenders() -> None:
    registry = contenders(lambda: "redis://unused")
    assert set(ALL_SERVERS.split(",")) == set(registry)
    for name in ("realtime-socketio", "socketio-node", "socketio"):
        assert registry[name].protocol == "socketio"
        assert not registry[name].needs_redis
    assert registry["realtime"].unavailable() is None
    # The default run is the one documented before: the new columns are asked for.
    assert "socketio-node" not in DEFAULT_SERVERS.split(",")


def test_the_socketio_flag_is_issue_11s_run() -> None:
    _, plan = parse(["--socketio", "--quick"])
    assert plan.servers == ["realtime-socketio", "socketio-node", "socketio"]
    assert plan.subscribers == [1000, 5000]
    _, plan = parse(["--socketio", "--subscribers", "20", "--servers", "socketio"])
    assert (plan.servers, plan.subscribers) == (["socketio"], [20])


def test_an_unavailable_contender_is_left_out_saying_why(
    capsys: pytest.CaptureFixture[str],
) -> None:
    def never(_: Path) -> Running:
        raise AssertionError("not started")

    missing = Contender("x", "realtime", never, unavailable=lambda: "no x here")
    assert not available(missing)
    assert "x: skipped, no x here" in capsys.readouterr().out


def context_for(running: Running) -> Context:
    urls = (normalize_url(running.ws_url, SOCKETIO),)
    target = Target(
        urls=urls,
        tokens=TokenSource(secret=SECRET),
        protocol=SOCKETIO,
        sources=loopback_sources(urls),
    )
    return Context(target, 2, (running.pid,), Progress(enabled=False))


async def fan_out_and_idle(running: Running) -> None:
    """The generator's Socket.IO mode: every message acked and delivered once, in order;
    the server's CPU per delivery and its memory per idle connection measured."""
    context = context_for(running)
    options = FanoutOptions(subscribers=20, rate=20, duration=1, drain=10)
    report = await run_fanout(context, options)
    assert report["protocol"] == "socketio"
    assert report["acknowledged"] == report["published"] == 20
    assert report["deliveries"] == report["expected_deliveries"] == 20 * 20
    assert (report["lost"], report["duplicated"], report["reordered"]) == (0, 0, 0)
    assert report["server_cpu_us_per_delivery"] is not None
    idle = await run_idle(context, IdleOptions(connections=20, settle=0.2))
    assert idle["connections"] == 20 and "bytes_per_connection" in idle


@pytest.mark.usefixtures("node_peer_installed")
async def test_the_generator_through_node_socketio(tmp_path: Path) -> None:
    running = start_node_peer(tmp_path, cpu=None)
    try:
        await fan_out_and_idle(running)
    finally:
        running.stop()


async def test_the_generator_through_python_socketio(tmp_path: Path) -> None:
    args = ("--secret", SECRET)
    running = start_peer(
        tmp_path, "bench.peers.socketio_server", *args, ws_path=SOCKETIO_PATH, cpu=None
    )
    try:
        await fan_out_and_idle(running)
    finally:
        running.stop()


async def test_the_generator_through_realtimes_socketio(tmp_path: Path) -> None:
    reason = realtime_socketio_missing()
    if reason is not None:
        pytest.skip(f"realtime-socketio: {reason}")
    running = start_realtime(tmp_path, ws_path=SOCKETIO_PATH, cpu=None)
    try:
        await fan_out_and_idle(running)
    finally:
        running.stop()


def attempt(server: str, subscribers: int, rate: float, cost: float) -> Attempt:
    return Attempt(
        server,
        subscribers,
        rate,
        True,
        "pass",
        5.0,
        deliveries_per_s=rate,
        delivered_ratio=1.0,
        p50_ms=10.0,
        p99_ms=50.0,
        server_us_per_delivery=cost,
        load_before=[0.5, 0.4, 0.3],
        load_after=[2.1, 0.9, 0.5],
    )


def test_the_tables_show_load_averages_ratios_and_issue_11s_goals() -> None:
    servers = ["realtime-socketio", "socketio-node", "socketio"]
    points = []
    for server, rate, cost in (
        ("realtime-socketio", 400_000.0, 2.0),
        ("socketio-node", 120_000.0, 8.0),
        ("socketio", 100_000.0, 40.0),
    ):
        point = Point(server, 1000)
        point.attempts.append(attempt(server, 1000, rate, cost))
        points.append(point)
    idles = [
        Idle(s, 100, {"connections": 100, "bytes_per_connection": kb * 1024}, None, [0.1], [1.0])
        for s, kb in (("realtime-socketio", 8), ("socketio-node", 14), ("socketio", 30))
    ]
    text = markdown("python -m bench.compare --socketio", "env", servers, [1000], points, idles)
    assert "| Node Socket.IO 4 | 1,000 | 120,000/s |" in text
    assert "| 2.0 | " in text and "| 0.50→2.10 |" in text  # µs per delivery, load average
    assert "| realtime over /socket.io/ ÷ Node Socket.IO 4 |" in text
    assert "3.33x (CPU 0.25x)" in text  # against Node
    assert "| memory per idle connection | 0.57x | 0.27x |" in text
    assert "| deliveries/s ≥ Node Socket.IO's | met |" in text
    assert "| deliveries/s ≥ 5 times python-socketio's | **not met** |" in text  # 4x
    assert (
        "| idle memory per connection < Node Socket.IO's | met (one figure for every S) |" in text
    )
    assert text.count("| deliveries/s ≥ Node Socket.IO's |") == 1
