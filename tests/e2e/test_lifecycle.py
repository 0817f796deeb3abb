"""The server's life: restarts, crashes, SIGTERM, REST disconnect and a PostgreSQL outage."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.protocol import State

from tests.client import Client, close_all
from tests.e2e.support import eventually
from tests.server import Http, ServerProcess, unique
from tests.services import PostgresServer

API = "/api/v1"
BACKENDS = ["sqlite", "postgres"]
# Pipelines of hundreds of commands must not hit the rate limit.
UNLIMITED = {"REALTIME_SERVER_RATE_LIMIT": "100000", "REALTIME_SERVER_RATE_BURST": "100000"}


async def members(http: Http, room: str, *users: str) -> None:
    for user in users:
        status, _ = await http.call("PUT", f"{API}/rooms/{room}/members/{user}")
        assert status == 204


async def all_messages(http: Http, room: str) -> list[dict[str, Any]]:
    """The whole history of a room, paged forward."""
    messages: list[dict[str, Any]] = []
    while True:
        status, page = await http.call(
            "GET", f"{API}/rooms/{room}/messages?after={len(messages)}&limit=200"
        )
        assert status == 200, page
        messages.extend(page["messages"])
        if not page["more"]:
            return messages


async def stream(
    client: Client, room: str, tasks: list[asyncio.Task[dict[str, Any]]], window: int = 200
) -> None:
    """Sends written in order, at most ``window`` unanswered, until the connection closes,
    a send is refused or 100,000 were made: however fast the server, a failure injected
    after the first answers always lands mid-stream."""
    while client.ws.protocol.state is State.OPEN and len(tasks) < 100_000:
        if len(tasks) >= window:
            oldest = tasks[-window]
            await asyncio.wait([oldest])
            if oldest.exception() is not None or "error" in oldest.result():
                return
        i = len(tasks)
        tasks.append(
            asyncio.create_task(client.request("send", room=room, body=i, client_id=f"p{i}"))
        )
        await asyncio.sleep(0)  # the new task writes its frame before the next is made


async def until_answered(tasks: list[asyncio.Task[dict[str, Any]]], count: int) -> None:
    async def enough() -> bool:
        return sum(task.done() for task in tasks) >= count

    await eventually(enough, timeout=20, interval=0.002)


def queued(client: Client) -> list[dict[str, Any]]:
    """Every push the client has received and not yet taken."""
    pushes = []
    while not client.pushes.empty():
        pushes.append(client.pushes.get_nowait())
    return pushes


# Restarts ---------------------------------------------------------------------------------


@pytest.mark.parametrize("store", BACKENDS)
async def test_everything_survives_a_restart(make_server: Any, store: str) -> None:
    server: ServerProcess = make_server(backend=store)
    room = unique("swap:")
    alice, bob, fan, star = unique("alice"), unique("bob"), unique("fan"), unique("star")
    async with Http(server) as http:
        await members(http, room, alice, bob)
        assert (await http.call("PUT", f"{API}/users/{fan}/following/{star}"))[0] == 204
        a = await Client.connected(server.ws_url, server.token(alice), rooms=[room])
        b = await Client.connected(server.ws_url, server.token(bob), rooms=[room])
        sent = [await a.call("send", room=room, body={"n": i}, client_id=f"c{i}") for i in range(3)]
        assert [s["seq"] for s in sent] == [1, 2, 3]
        before = await a.call("history", room=room)
        assert (await b.call("read", room=room, seq=2))["seq"] == 2
        for i in range(3):
            await http.call("POST", f"{API}/notifications", {"to": [alice], "type": f"t{i}"})
        notes = (await a.call("notifications"))["items"]
        await a.call("notifications.read", ids=[notes[0]["id"]])
        await close_all(a, b)

    await asyncio.to_thread(server.restart)

    async with Http(server) as http:
        a = await Client.connected(server.ws_url, server.token(alice))
        b = await Client.connected(server.ws_url, server.token(bob))
        fan_client = await Client.connected(server.ws_url, server.token(fan))
        # messages, seqs and epoch
        after = await a.call("history", room=room)
        assert after == before
        rejoined = await a.call("join", room=room, since=1, epoch=before["epoch"])
        assert (rejoined["seq"], rejoined["epoch"], rejoined["recovered"]) == (
            3,
            before["epoch"],
            True,
        )
        assert [m["body"] for m in rejoined["missed"]] == [{"n": 1}, {"n": 2}]
        # seq continues, and client_id idempotency still holds
        assert (await a.call("send", room=room, body="later"))["seq"] == 4
        assert (await a.call("send", room=room, body="again", client_id="c1"))["seq"] == 2
        assert [m["seq"] for m in await all_messages(http, room)] == [1, 2, 3, 4]
        # members and the follow graph
        assert await http.call("GET", f"{API}/rooms/{room}/members") == (
            200,
            {"users": sorted([alice, bob])},
        )
        await b.call("join", room=room)
        assert (await fan_client.call("join", room=f"followers:{star}"))["room"]
        # read marks never move back, also across a restart
        assert (await b.call("read", room=room, seq=1))["seq"] == 2
        # notifications and their read flags
        reply = await a.call("notifications")
        assert [(n["id"], n["type"]) for n in reply["items"]] == [
            (n["id"], n["type"]) for n in notes
        ]
        assert [n["read"] for n in reply["items"]] == [True, False, False]
        assert reply["unread_count"] == 2
        await http.call("POST", f"{API}/notifications", {"to": [alice], "type": "new"})
        fresh = await a.push("notification")
        assert fresh["id"] > notes[-1]["id"]
        await close_all(a, b, fan_client)


async def test_a_new_database_gives_rooms_a_new_epoch(make_server: Any) -> None:
    """History lost (a fresh database): the epoch changes, so old `since` values fail."""
    server: ServerProcess = make_server()
    room, user = unique("swap:"), unique("u")
    async with Http(server) as http:
        await members(http, room, user)
        for k in range(2):
            await http.call("POST", f"{API}/rooms/{room}/messages", {"body": k})
        status, page = await http.call("GET", f"{API}/rooms/{room}/messages")
        assert status == 200 and len(page["messages"]) == 2
    old_epoch = page["epoch"]
    await asyncio.to_thread(server.stop)
    for path in server.workdir.glob("realtime.db*"):
        path.unlink()
    await asyncio.to_thread(server.start)
    async with Http(server) as http:
        await members(http, room, user)
        client = await Client.connected(server.ws_url, server.token(user))
        joined = await client.call("join", room=room, since=2, epoch=old_epoch)
        assert joined["epoch"] != old_epoch and joined["seq"] == 0
        assert (joined["recovered"], joined["missed"]) == (False, [])
        assert (await client.call("send", room=room, body="new"))["seq"] == 1
        await client.close()


@pytest.mark.parametrize("store", BACKENDS)
async def test_acknowledged_sends_survive_a_crash(make_server: Any, store: str) -> None:
    server: ServerProcess = make_server(backend=store, env=UNLIMITED)
    room, user = unique("swap:"), unique("u")
    async with Http(server) as http:
        await members(http, room, user)
    client = await Client.connected(server.ws_url, server.token(user), rooms=[room])
    tasks: list[asyncio.Task[dict[str, Any]]] = []
    sending = asyncio.create_task(stream(client, room, tasks))
    await until_answered(tasks, 40)
    await asyncio.to_thread(server.kill)
    await sending
    results = await asyncio.gather(*tasks, return_exceptions=True)
    await client.close()
    replies = [r for r in results if isinstance(r, dict)]
    assert all("ok" in r for r in replies), [r for r in replies if "ok" not in r][:3]
    acked = {r["ok"]["seq"]: i for i, r in enumerate(results) if isinstance(r, dict)}
    assert len(acked) >= 40
    await asyncio.to_thread(server.start)
    async with Http(server) as http:
        history = await all_messages(http, room)
    stored = {m["seq"]: m["body"] for m in history}
    assert list(stored) == list(range(1, len(stored) + 1))  # gapless
    for seq, body in acked.items():
        assert stored.get(seq) == body, f"acknowledged seq {seq} lost or changed"


# SIGTERM ----------------------------------------------------------------------------------


@pytest.mark.parametrize("store", BACKENDS)
async def test_sigterm_answers_the_command_in_flight_then_closes_with_1012(
    make_server: Any, store: str
) -> None:
    # A short close timeout: the server waits that long for the close frame of a client
    # that still has commands queued (see the report), which only slows the test down.
    server: ServerProcess = make_server(
        backend=store, env={**UNLIMITED, "REALTIME_SERVER_CLOSE_TIMEOUT": "0.5"}
    )
    room, sender, listener, idle = unique("swap:"), unique("s"), unique("l"), unique("i")
    async with Http(server) as http:
        await members(http, room, sender, listener)
    s = await Client.connected(server.ws_url, server.token(sender), rooms=[room])
    li = await Client.connected(server.ws_url, server.token(listener), rooms=[room])
    i = await Client.connected(server.ws_url, server.token(idle))
    tasks: list[asyncio.Task[dict[str, Any]]] = []
    sending = asyncio.create_task(stream(s, room, tasks))
    await until_answered(tasks, 30)
    exit_code = asyncio.create_task(asyncio.to_thread(server.terminate))
    closes = await asyncio.gather(s.closed(), li.closed(), i.closed())
    assert [code for code, _ in closes] == [1012, 1012, 1012], closes
    assert await exit_code == 0
    await sending
    results = await asyncio.gather(*tasks, return_exceptions=True)
    answered = [r for r in results if isinstance(r, dict)]
    n = len(answered)
    assert n >= 30 and len(tasks) < 100_000, "SIGTERM must arrive while the stream runs"
    # replies come in order: each command answered, until the socket closed
    assert all(isinstance(r, dict) and "ok" in r for r in results[:n]), answered[-3:]
    assert all(isinstance(r, BaseException) for r in results[n:])
    assert [r["ok"]["seq"] for r in answered] == list(range(1, n + 1)), answered[:3]
    pushed = [p for p in queued(li) if p.get("push") == "message"]
    assert [p["seq"] for p in pushed] == list(range(1, len(pushed) + 1))
    assert len(pushed) <= n  # nothing was pushed that its sender did not get answered
    await close_all(s, li, i)
    # exactly what was acknowledged is stored: no command was done without its answer
    await asyncio.to_thread(server.start)
    async with Http(server) as http:
        history = await all_messages(http, room)
        assert [(m["seq"], m["body"]) for m in history] == [(k + 1, k) for k in range(n)]
        status, reply = await http.call("POST", f"{API}/rooms/{room}/messages", {"body": "next"})
        assert (status, reply["seq"]) == (201, n + 1)


async def test_sigterm_with_idle_connections_exits_0_at_once(make_server: Any) -> None:
    # Nothing to wait for: it exits long before the shutdown timeout.
    server: ServerProcess = make_server(env={"REALTIME_SERVER_SHUTDOWN_TIMEOUT": "60"})
    clients = [await Client.connected(server.ws_url, server.token(unique("u"))) for _ in range(5)]
    started = time.monotonic()
    exit_code = asyncio.create_task(asyncio.to_thread(server.terminate))
    closes = await asyncio.gather(*(c.closed() for c in clients))
    assert {code for code, _ in closes} == {1012}
    assert await exit_code == 0
    assert time.monotonic() - started < 30
    await close_all(*clients)


# REST disconnect ------------------------------------------------------------------------


async def test_rest_disconnect_closes_every_connection_of_the_user_with_4004(
    make_server: Any,
) -> None:
    server: ServerProcess = make_server()
    user, other = unique("u"), unique("w")
    token = server.token(user)
    mine = [
        await Client.connected(server.ws_url, token),
        await Client.connected(server.ws_url, token, encoding="msgpack"),
    ]
    by_header = await Client.open(server.ws_url, headers={"Authorization": f"Bearer {token}"})
    assert await by_header.call("ping") == {}  # authenticated by the upgrade header
    mine.append(by_header)
    theirs = await Client.connected(server.ws_url, server.token(other))
    async with Http(server) as http:
        status, body = await http.call(
            "POST", f"{API}/users/{user}/disconnect", {"reason": "account suspended"}
        )
        assert (status, body) == (204, None)
        closes = await asyncio.gather(*(c.closed() for c in mine))
        assert closes == [(4004, "account suspended")] * 3
        assert await theirs.call("ping") == {}
        # not a ban: the user may come back, and a call without a reason works too
        again = await Client.connected(server.ws_url, token)
        assert (await http.call("POST", f"{API}/users/{user}/disconnect"))[0] == 204
        code, _ = await again.closed()
        assert code == 4004
        # nobody online: still 204
        assert (await http.call("POST", f"{API}/users/{unique('nobody')}/disconnect", {}))[0] == 204
        assert await theirs.call("ping") == {}
    await close_all(*mine, again, theirs)


async def test_rest_disconnect_with_a_long_non_ascii_reason(make_server: Any) -> None:
    """A close reason is at most 123 bytes; cutting it must keep it valid UTF-8."""
    server: ServerProcess = make_server()
    user = unique("u")
    client = await Client.connected(server.ws_url, server.token(user))
    reason = "Konto gesperrt: " + "ü" * 100
    async with Http(server) as http:
        status, _ = await http.call("POST", f"{API}/users/{user}/disconnect", {"reason": reason})
        assert status == 204
    code, got = await client.closed()
    assert code == 4004, (code, got)
    assert got and reason.startswith(got) and len(got.encode()) <= 123
    await client.close()


# PostgreSQL outage --------------------------------------------------------------------


@pytest.fixture(scope="module")
def private_postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL of this module alone, so that tests can stop it."""
    with PostgresServer() as postgres:
        yield postgres
        crash_postgres(postgres)  # faster than a clean shutdown; it is thrown away


STORAGE_TIMEOUT = 1.0
# A command waiting on a dead or hung database is answered "unavailable", not left
# hanging: checked as an outer bound a busy 2-core machine cannot reach, not a speed.
ANSWERED_WITHIN = 10 * STORAGE_TIMEOUT


@pytest.fixture(scope="module")
def outage_server(
    private_postgres: PostgresServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """One realtime server for all the outage tests: it must live through every one."""
    server = ServerProcess(
        tmp_path_factory.mktemp("outage"),
        dsn=private_postgres.create_database(unique("db_")),
        env={"REALTIME_STORAGE_TIMEOUT": str(STORAGE_TIMEOUT), **UNLIMITED},
    )
    server.start()
    yield server
    server.kill()


@pytest.fixture(autouse=True)
def postgres_back_up(request: pytest.FixtureRequest) -> Iterator[None]:
    """After an outage test, PostgreSQL runs again (also when the test failed)."""
    yield
    if "private_postgres" in request.fixturenames:
        postgres: PostgresServer = request.getfixturevalue("private_postgres")
        if not postgres.running:
            postgres.start()


def unavailable(error: dict[str, str]) -> bool:
    """The error an outage must give."""
    return error["code"] == "unavailable"


def postgres_processes(postgres: PostgresServer) -> list[int]:
    """The postmaster and its children. Each backend calls setsid(), so killing the
    postmaster's process group (``PostgresServer.kill``) leaves them running."""
    postmaster = int((postgres.directory / "data" / "postmaster.pid").read_text().split()[0])
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue  # exited meanwhile
        if int(fields[1]) == postmaster:
            children.append(int(stat.parent.name))
    return [postmaster, *children]


def crash_postgres(postgres: PostgresServer) -> None:
    """SIGKILL every PostgreSQL process at once, like a crash of its machine."""
    for pid in postgres_processes(postgres):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    postgres.kill()  # reaps the postmaster


async def _is_ready(http: Http) -> bool:
    return (await http.call("GET", "/readyz", key=None))[0] == 200


async def _timed_sequence(*calls: Callable[[], Awaitable[Any]]) -> list[tuple[float, Any]]:
    """Make calls one after another (commands of one connection), timing each."""
    results = []
    for call in calls:
        started = time.monotonic()
        result = await call()
        results.append((time.monotonic() - started, result))
    return results


async def _outage(http: Http, a: Client, b: Client, room: str, tag: str) -> None:
    """While the database is down: every storage call fails with unavailable, in time."""
    groups = await asyncio.gather(
        _timed_sequence(
            lambda: a.request("send", room=room, body=f"{tag}0", client_id=f"{tag}0"),
            lambda: a.request("send", room=room, body=f"{tag}1", client_id=f"{tag}1"),
            lambda: a.request("notifications"),
        ),
        _timed_sequence(
            lambda: b.request("send", room=room, body=f"{tag}b", client_id=f"{tag}b"),
            lambda: b.request("history", room=room),
        ),
        _timed_sequence(
            lambda: http.call("POST", f"{API}/rooms/{room}/messages", {"body": f"{tag}rest"})
        ),
        _timed_sequence(
            lambda: http.call("POST", f"{API}/notifications", {"to": ["x"], "type": "t"})
        ),
        _timed_sequence(lambda: http.call("GET", "/readyz", key=None)),
    )
    names = [
        "a send",
        "a send",
        "a notifications",
        "b send",
        "b history",
        "REST message",
        "REST notification",
        "readyz",
    ]
    results = [result for group in groups for result in group]
    timings = [(name, round(elapsed, 2)) for name, (elapsed, _) in zip(names, results, strict=True)]
    assert all(elapsed < ANSWERED_WITHIN for elapsed, _ in results), timings
    for _, reply in results[:5]:
        assert unavailable(reply["error"]), reply
    for _, reply in results[5:7]:
        assert reply[0] in (503, 500) and unavailable(reply[1]["error"]), reply
        assert (reply[0] == 503) == (reply[1]["error"]["code"] == "unavailable")
    status, ready = results[7][1]
    assert status == 503 and ready["ready"] is False
    assert ready["checks"]["storage"] != "ok" and ready["checks"]["broker"] == "ok"
    # the command errors left the connections open
    assert await a.call("ping") == {} and await b.call("ping") == {}


async def _recovered(http: Http, a: Client, b: Client, room: str, tag: str) -> None:
    """After the database is back: ready again, sends succeed, seq continues gapless
    after the three messages of ``_outage_setup``, and history holds exactly those."""
    seq = 3

    await eventually(lambda: _is_ready(http), timeout=15, interval=0.1)
    # Retries of the refused sends (same client_id) are new messages: nothing was stored.
    replies = [
        await a.call("send", room=room, body=f"{tag}up{k}", client_id=f"{tag}{k}") for k in range(3)
    ]
    assert [r["seq"] for r in replies] == [seq + 1, seq + 2, seq + 3]
    pushes = await b.pushes_of("message", 3)
    assert [(p["seq"], p["body"]) for p in pushes] == [
        (seq + k + 1, f"{tag}up{k}") for k in range(3)
    ]
    await b.no_push("message", wait=0.2)
    history = await all_messages(http, room)
    assert [m["body"] for m in history] == [
        "before0",
        "before1",
        "before2",
        f"{tag}up0",
        f"{tag}up1",
        f"{tag}up2",
    ]
    assert [m["seq"] for m in history] == list(range(1, seq + 4))


async def _outage_setup(server: ServerProcess, http: Http) -> tuple[str, Client, Client]:
    room, alice, bob = unique("swap:"), unique("alice"), unique("bob")
    await members(http, room, alice, bob)
    a = await Client.connected(server.ws_url, server.token(alice), rooms=[room])
    b = await Client.connected(server.ws_url, server.token(bob), rooms=[room])
    for k in range(3):
        assert (await a.call("send", room=room, body=f"before{k}"))["seq"] == k + 1
    assert [p["seq"] for p in await b.pushes_of("message", 3)] == [1, 2, 3]
    return room, a, b


async def test_postgres_down_then_back_without_restarting_the_server(
    private_postgres: PostgresServer, outage_server: ServerProcess
) -> None:
    server = outage_server
    async with Http(server) as http:
        room, a, b = await _outage_setup(server, http)
        await asyncio.to_thread(crash_postgres, private_postgres)
        await _outage(http, a, b, room, "down")
        await asyncio.to_thread(private_postgres.start)
        await _recovered(http, a, b, room, "down")
        await close_all(a, b)
    assert server.process is not None and server.process.poll() is None


async def test_postgres_hanging_then_back_without_restarting_the_server(
    private_postgres: PostgresServer, outage_server: ServerProcess
) -> None:
    """A database that accepts TCP but never answers (SIGSTOP): calls time out."""
    server = outage_server
    async with Http(server) as http:
        room, a, b = await _outage_setup(server, http)
        # the postmaster first (no new backends), then its children
        stopped = postgres_processes(private_postgres)
        try:
            for pid in stopped:
                os.kill(pid, signal.SIGSTOP)
            await _outage(http, a, b, room, "hung")
        finally:
            for pid in reversed(stopped):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)
        await _recovered(http, a, b, room, "hung")
        await close_all(a, b)


async def test_a_store_call_in_flight_when_postgres_dies_is_answered_unavailable(
    private_postgres: PostgresServer, outage_server: ServerProcess
) -> None:
    server = outage_server
    async with Http(server) as http:
        room, a, b = await _outage_setup(server, http)
        processes = postgres_processes(private_postgres)
        try:
            for pid in processes:
                os.kill(pid, signal.SIGSTOP)  # the next queries wait for an answer...
            calls = [
                asyncio.create_task(a.request("send", room=room, body="x", client_id="x")),
                asyncio.create_task(b.request("history", room=room)),
                asyncio.create_task(_rest_error(http, "GET", f"{API}/rooms/{room}/messages")),
                asyncio.create_task(_rest_error(http, "GET", f"{API}/users/u/notifications")),
            ]
            await asyncio.sleep(0.3)
        finally:
            await asyncio.to_thread(crash_postgres, private_postgres)  # ...and get none
        replies = await asyncio.gather(*calls)
        await asyncio.to_thread(private_postgres.start)
        await eventually(lambda: _is_ready(http), timeout=15, interval=0.1)
        assert (await a.call("send", room=room, body="y", client_id="x"))["seq"] == 4
        await close_all(a, b)
        assert [r.get("error", {}).get("code") for r in replies] == ["unavailable"] * 4, replies


async def _rest_error(http: Http, method: str, path: str) -> dict[str, Any]:
    status, body = await http.call(method, path)
    assert (status == 503) == (body.get("error", {}).get("code") == "unavailable"), body
    return dict(body)


async def test_postgres_crash_under_load_loses_nothing_acknowledged(
    private_postgres: PostgresServer, outage_server: ServerProcess
) -> None:
    """Sends in flight when PostgreSQL dies get ok or unavailable, never another error."""
    server = outage_server
    async with Http(server) as http:
        room, a, b = await _outage_setup(server, http)
        tasks: list[asyncio.Task[dict[str, Any]]] = []
        sending = asyncio.create_task(stream(a, room, tasks))
        await until_answered(tasks, 20)
        await asyncio.to_thread(crash_postgres, private_postgres)
        await sending
        replies = await asyncio.gather(*tasks)
        acked = {r["ok"]["seq"]: r["id"] for r in replies if "ok" in r}
        errors = [r["error"] for r in replies if "error" in r]
        assert errors, "the crash must come while sends are in flight"
        unexpected = [e for e in errors if not unavailable(e)]
        assert not unexpected, unexpected[:3]
        await asyncio.to_thread(private_postgres.start)

        await eventually(lambda: _is_ready(http), timeout=15, interval=0.1)
        history = await all_messages(http, room)
        stored = {m["seq"]: m for m in history}
        assert list(stored) == list(range(1, len(stored) + 1))  # gapless
        for seq in acked:
            assert seq in stored, f"acknowledged seq {seq} lost"
        # every stored message is one send, stored once (a send whose commit was in
        # flight may be stored unanswered; its retry with the client_id finds it)
        bodies = [m["body"] for m in history[3:]]
        assert len(bodies) == len(set(bodies))
        next_seq = (await a.call("send", room=room, body="after"))["seq"]
        assert next_seq == len(stored) + 1
        await close_all(a, b)
