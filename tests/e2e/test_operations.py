"""Operations: JSON logs naming the connection, the access log, process and latency
metrics, and a start-up that fails in one line when the port is taken."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any

import orjson
from redis.asyncio.cluster import RedisCluster

from tests.client import Client
from tests.e2e.conftest import ServerFactory
from tests.e2e.helpers_auth import encode, raw_open, raw_reply
from tests.e2e.support import cli_env, eventually, metric, run_cli
from tests.server import SECRET, SERVICE_KEY, Http, ServerProcess, unique
from tests.services import RedisClusterServer

API = "/api/v1"
# Anyone may join and send; no history, so messages take the unsequenced path.
LIVE_NAMESPACE = """
[namespaces.live]
join = "anyone"
send = "anyone"
history = false
"""


def json_lines(server: ServerProcess) -> list[dict[str, Any]]:
    """Every line the server logged, each of which must be one JSON object."""
    lines = []
    for line in server.log().splitlines():
        if line.strip():
            record = orjson.loads(line)  # raises on a line that is not JSON
            assert isinstance(record, dict), line
            lines.append(record)
    return lines


async def logged(server: ServerProcess, text: str, count: int = 1) -> list[dict[str, Any]]:
    """The JSON lines whose message contains ``text``, once ``count`` of them are there."""

    async def there() -> bool:
        return len([r for r in json_lines(server) if text in r["message"]]) >= count

    await eventually(there, timeout=10)
    return [r for r in json_lines(server) if text in r["message"]]


async def test_json_log_lines_name_the_user_and_session_of_their_connection(
    make_server: ServerFactory,
) -> None:
    server = make_server(env={"REALTIME_SERVER_LOG_FORMAT": "json"})
    users = [unique("alice"), unique("bob")]
    clients = [await Client.connected(server.ws_url, server.token(user)) for user in users]
    sessions = {
        client.session["session"]: user for client, user in zip(clients, users, strict=True)
    }
    assert len(sessions) == 2
    for client in clients:
        await client.send_raw("this is not JSON")
        assert (await client.closed())[0] == 4000
        await client.close()

    closes = await logged(server, "closing with 4000", count=2)
    assert {r["session"]: r["user"] for r in closes} == sessions
    for record in closes:
        assert record["level"] == "INFO" and record["logger"] == "realtime.ws"
        assert record["time"].endswith("Z")
    # A line about no connection names none.
    (ready,) = await logged(server, "ready")
    assert ready["user"] is None and ready["session"] is None


async def test_a_slow_readers_close_is_logged_with_its_connection(
    make_server: ServerFactory,
) -> None:
    """4009 is decided in the sender's fan-out: the line names the reader all the same."""
    server = make_server(
        env={
            "REALTIME_SERVER_LOG_FORMAT": "json",
            # straight to 4009, no degrading first
            "REALTIME_SERVER_SEND_BUFFER_BYTES": "65536",
            "REALTIME_SERVER_SEND_BUFFER_SOFT_BYTES": "65536",
            "REALTIME_SERVER_RATE_LIMIT": "5000",
            "REALTIME_SERVER_RATE_BURST": "5000",
        },
        config_text=LIVE_NAMESPACE,
    )
    room, reader, writer = unique("live:"), unique("reader"), unique("writer")
    sender = await Client.connected(server.ws_url, server.token(writer), rooms=[room])
    # A reader that stops reading: a small receive buffer, and websockets stops taking
    # bytes off the socket once one frame waits unread.
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", server.port))
    slow = await raw_open(server.ws_url, ["rt1.json"], sock=sock, max_queue=1)
    try:
        await slow.send(encode("json", {"id": 1, "op": "connect", "token": server.token(reader)}))
        _, connected = await raw_reply(slow, 1)
        session = connected["ok"]["session"]
        await slow.send(encode("json", {"id": 2, "op": "join", "room": room}))
        await raw_reply(slow, 2)
        body = "z" * 20_000
        async with asyncio.timeout(60):
            while not any("closing with 4009" in r["message"] for r in json_lines(server)):
                await asyncio.gather(
                    *(sender.call("send", room=room, body=body) for _ in range(50))
                )
    finally:
        await slow.close()
        await sender.close()
    (record,) = await logged(server, "closing with 4009")
    assert (record["user"], record["session"]) == (reader, session)
    assert record["session"] != sender.session["session"]


async def test_access_log_when_on_without_keys_or_query_and_none_when_off(
    make_server: ServerFactory,
) -> None:
    json_on = make_server(
        env={"REALTIME_SERVER_LOG_FORMAT": "json", "REALTIME_SERVER_ACCESS_LOG": "true"}
    )
    text_on = make_server(env={"REALTIME_SERVER_ACCESS_LOG": "true"}, name="text")
    off = make_server(name="off")
    user = unique("u")
    for server in (json_on, text_on, off):
        async with Http(server) as http:
            status, _ = await http.call(
                "POST", f"{API}/notifications", {"to": [user], "type": "t", "data": {"n": 1}}
            )
            assert status == 202
            status, _ = await http.call(
                "GET", f"{API}/users/{user}/notifications?limit=5&token=query-secret"
            )
            assert status == 200
            status, _ = await http.call("GET", f"{API}/users/{user}/notifications", key=None)
            assert status == 401
            status, _ = await http.call("GET", "/no/such/path", key=None)
            assert status == 404

    expected = [
        ("POST", f"{API}/notifications", 202),
        ("GET", f"{API}/users/{user}/notifications", 200),
        ("GET", f"{API}/users/{user}/notifications", 401),
        ("GET", "/no/such/path", 404),
    ]
    await logged(json_on, "/no/such/path")
    access = [r for r in json_lines(json_on) if r["logger"] == "realtime.access"]
    seen = [(r["method"], r["path"], r["status"]) for r in access]
    assert seen[-4:] == expected, seen
    for record in access:
        assert isinstance(record["duration_ms"], float) and record["duration_ms"] >= 0
        assert record["message"].startswith(f"{record['method']} {record['path']} ")

    async def text_logged() -> bool:
        return "GET /no/such/path 404 " in text_on.log()

    await eventually(text_logged, timeout=10)
    text_lines = [line for line in text_on.log().splitlines() if " realtime.access: " in line]
    assert [line.split(": ", 1)[1].rsplit(" ", 1)[0] for line in text_lines[-4:]] == [
        f"{method} {path} {status}" for method, path, status in expected
    ]

    for server in (json_on, text_on, off):
        log = server.log()
        assert SERVICE_KEY not in log and "query-secret" not in log
        assert SECRET not in log
    assert "realtime.access" not in off.log() and f"{API}/notifications" not in off.log()


async def test_metrics_have_process_gc_request_and_delivery_latency(
    make_server: ServerFactory,
) -> None:
    server = make_server(config_text=LIVE_NAMESPACE)
    user, live = unique("u"), unique("live:")
    async with Http(server) as http:
        client = await Client.connected(server.ws_url, server.token(user), rooms=[live])
        # A stored message (the sequenced path) and a live one (unsequenced).
        status, _ = await http.call("POST", f"{API}/rooms/user:{user}/messages", {"body": "stored"})
        assert status == 201
        await client.push_where("message", room=f"user:{user}")
        await client.call("send", room=live, body="live")
        await client.push_where("message", room=live)
        await client.close()
        status, _ = await http.call("GET", "/no/such/path", key=None)
        assert status == 404
        status, raw = await http.call("GET", "/metrics", key=None)
        assert status == 200 and isinstance(raw, str)
        text = raw

    assert metric(text, "process_cpu_seconds_total") > 0
    assert metric(text, "process_resident_memory_bytes") > 0
    assert metric(text, "process_open_fds") > 0
    assert "python_gc_collections_total{" in text
    assert "python_gc_objects_collected_total{" in text
    assert "python_info{" in text

    def requests(**labels: str) -> float:
        return metric(text, "realtime_http_request_seconds_count", **labels)

    assert requests(route="/api/v1/rooms/{room}/messages", method="POST", status="201") == 1
    assert requests(route="unmatched", method="GET", status="404") == 1
    assert (
        metric(
            text,
            "realtime_http_request_seconds_bucket",
            route="unmatched",
            method="GET",
            status="404",
            le="+Inf",
        )
        == 1
    )

    deliveries = metric(text, "realtime_delivery_latency_seconds_count")
    assert deliveries == 2  # one per message and instance, whatever the recipients
    # Seconds, not milliseconds: two messages delivered at once take well under a minute.
    assert 0 <= metric(text, "realtime_delivery_latency_seconds_sum") < 60


def test_port_taken_fails_in_one_line_before_anything_starts(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        database = tmp_path / "realtime.db"
        config = tmp_path / "empty.toml"
        config.write_text("")
        result = run_cli(
            "serve",
            "--config",
            str(config),
            env=cli_env(
                REALTIME_AUTH_SECRET=SECRET,
                REALTIME_SERVER_PORT=str(port),
                REALTIME_STORAGE_DSN=f"sqlite:///{database}",
            ),
            cwd=tmp_path,
        )
    assert result.returncode == 1, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert f"127.0.0.1:{port}" in lines[0] and "in use" in lines[0], lines
    assert "Traceback" not in result.stderr + result.stdout
    assert " ready" not in result.stderr + result.stdout  # "instance … ready"
    assert not database.exists()  # the store was never opened


async def test_shared_work_a_join_started_names_no_connection(
    make_server: ServerFactory, redis_cluster: RedisClusterServer
) -> None:
    """On a Redis Cluster a shard's listener starts with the first subscription to a
    channel there, in the task of the join that asked for it: the listener's lines
    must not name that connection (nor keep it alive)."""
    prefix = unique("ops")
    server = make_server(
        env={
            "REALTIME_SERVER_LOG_FORMAT": "json",
            "REALTIME_BROKER_URL": redis_cluster.url,
            "REALTIME_BROKER_PREFIX": prefix,
        }
    )
    user = unique("u")
    client = await Client.connected(server.ws_url, server.token(user))
    cluster = RedisCluster.from_url(redis_cluster.url.replace("redis+cluster", "redis"))
    try:
        await cluster.spublish(f"{prefix}:user:{user}", b"not an event")
        (dropped,) = await logged(server, f"dropped a broker message on user:{user}")
    finally:
        await cluster.aclose()
        await client.close()
    assert (dropped["user"], dropped["session"]) == (None, None)
