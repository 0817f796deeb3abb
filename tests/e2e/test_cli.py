"""The command line (contract section 7): ``token``, ``migrate`` and ``serve``'s settings."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import jwt
import pytest

from tests.client import Client, CommandFailed
from tests.e2e.support import cli_env, run_cli, run_cli_async
from tests.server import SECRET, ServerProcess, unique
from tests.services import PostgresServer, free_port

TABLES = {"rooms", "messages", "reads", "members", "follows", "notifications", "schema_migrations"}


@pytest.fixture(scope="module")
def cli_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server with the test secret, which tokens from the command line must pass."""
    server = ServerProcess(tmp_path_factory.mktemp("cli"))
    server.start()
    yield server
    server.stop()


async def mint(*args: str, **settings: str) -> str:
    code, output = await run_cli_async(
        "token", *args, env=cli_env(REALTIME_AUTH_SECRET=SECRET, **settings)
    )
    assert code == 0, output
    token = output.strip()
    assert token.count(".") == 2 and "\n" not in token, output
    return token


def claims_of(token: str) -> dict[str, Any]:
    claims: dict[str, Any] = jwt.decode(token, SECRET, algorithms=["HS256"])
    return claims


async def test_token_is_accepted_by_a_server_with_the_same_secret(
    cli_server: ServerProcess,
) -> None:
    user = unique("alice")
    token, short, configured = await asyncio.gather(
        mint(user), mint(user, "--ttl", "120"), mint(user, REALTIME_AUTH_TOKEN_TTL="600")
    )
    claims = claims_of(token)
    assert claims["sub"] == user and "room" not in claims
    assert abs(claims["exp"] - (time.time() + 3600)) < 60  # auth.token_ttl
    client = await Client.connected(cli_server.ws_url, token)
    assert client.session["user"] == user
    await client.close()
    # --ttl, and auth.token_ttl from the environment
    assert abs(claims_of(short)["exp"] - (time.time() + 120)) < 30
    assert abs(claims_of(configured)["exp"] - (time.time() + 600)) < 30


async def test_room_token_lets_its_user_join_that_room_only(cli_server: ServerProcess) -> None:
    user, room = unique("bob"), unique("swap:")
    token = await mint(user, "--room", room)
    claims = claims_of(token)
    assert (claims["sub"], claims["room"]) == (user, room)
    client = await Client.connected(cli_server.ws_url, cli_server.token(user))
    joined = await client.call("join", room=room, token=token)
    assert joined["room"] == room
    assert (await client.call("send", room=room, body="via room token"))["seq"] == 1
    with pytest.raises(CommandFailed) as refused:
        await client.call("join", room=unique("swap:"), token=token)
    assert refused.value.code == "unauthorized"
    await client.close()


async def test_token_with_another_secret_is_refused(cli_server: ServerProcess) -> None:
    other_secret = "another-secret-" + "y" * 32
    result = run_cli("token", "mallory", env=cli_env(REALTIME_AUTH_SECRET=other_secret))
    assert result.returncode == 0, result.stderr
    client = await Client.open(cli_server.ws_url)
    reply = await client.request("connect", token=result.stdout.strip())
    assert reply["error"]["code"] == "unauthorized"
    assert (await client.closed())[0] == 4001
    await client.close()


def test_token_refuses_a_bad_user_id() -> None:
    result = run_cli("token", "not a user", env=cli_env(REALTIME_AUTH_SECRET=SECRET))
    assert result.returncode != 0 and result.stdout == ""


# migrate --------------------------------------------------------------------------------


def sqlite_schema(path: Path) -> tuple[set[str], list[Any]]:
    with sqlite3.connect(path) as db:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        versions = db.execute("SELECT * FROM schema_migrations ORDER BY version").fetchall()
    db.close()
    return tables, versions


async def test_migrate_a_fresh_sqlite_database_twice(tmp_path: Path) -> None:
    absolute = tmp_path / "abs" / "fresh.db"
    absolute.parent.mkdir()
    env = cli_env(REALTIME_AUTH_SECRET=SECRET, REALTIME_STORAGE_DSN=f"sqlite:///{absolute}")
    # a relative DSN is relative to the working directory
    workdir = tmp_path / "work"
    workdir.mkdir()
    relative_env = {**env, "REALTIME_STORAGE_DSN": "sqlite:///relative.db"}

    async def migrate_both() -> None:
        results = await asyncio.gather(
            run_cli_async("migrate", env=env),
            run_cli_async("migrate", env=relative_env, cwd=workdir),
        )
        assert [code for code, _ in results] == [0, 0], results

    await migrate_both()
    tables, versions = sqlite_schema(absolute)
    assert tables >= TABLES and versions
    await migrate_both()
    assert sqlite_schema(absolute) == (tables, versions)  # nothing applied again
    relative_tables, relative_versions = sqlite_schema(workdir / "relative.db")
    assert relative_tables == tables
    assert [v[0] for v in relative_versions] == [v[0] for v in versions]
    # a server on the migrated file works
    server = ServerProcess(tmp_path / "server", dsn=f"sqlite:///{absolute}")
    server.start()
    try:
        status, reply = await server.rest("POST", "/api/v1/rooms/swap:1/messages", {"body": 1})
        assert (status, reply["seq"]) == (201, 1)
    finally:
        server.kill()
    assert "applied migrations" not in server.log()


async def _postgres_schema(dsn: str) -> tuple[set[str], list[Any]]:
    conn = await asyncpg.connect(dsn)
    try:
        tables = {
            row[0]
            for row in await conn.fetch(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
            )
        }
        versions = [
            tuple(r) for r in await conn.fetch("SELECT * FROM schema_migrations ORDER BY version")
        ]
    finally:
        await conn.close()
    return tables, versions


async def test_migrate_a_fresh_postgres_database_twice(postgres_server: PostgresServer) -> None:
    dsn = postgres_server.create_database(unique("cli_"))
    env = cli_env(REALTIME_AUTH_SECRET=SECRET, REALTIME_STORAGE_DSN=dsn)
    # several at once on a fresh database (as instances starting together): all succeed
    results = await asyncio.gather(*(run_cli_async("migrate", env=env) for _ in range(3)))
    assert [code for code, _ in results] == [0, 0, 0], results
    tables, versions = await _postgres_schema(dsn)
    assert tables >= TABLES and versions
    assert len({v[0] for v in versions}) == len(versions)
    code, output = await run_cli_async("migrate", env=env)
    assert code == 0, output
    assert await _postgres_schema(dsn) == (tables, versions)  # nothing applied again


# serve with bad settings ------------------------------------------------------------------


async def test_serve_refuses_bad_settings_naming_them(tmp_path: Path) -> None:
    base = {
        "REALTIME_AUTH_SECRET": SECRET,
        "REALTIME_SERVER_PORT": str(free_port()),
        "REALTIME_STORAGE_DSN": f"sqlite:///{tmp_path / 'serve.db'}",
    }
    files = {
        "unknown key": ("[server]\nbogus_key = 1\n", "server.bogus_key"),
        "bad type": ('[server]\nmax_frame_bytes = "big"\n', "server.max_frame_bytes"),
        "bad choice": ('[namespaces.swap]\njoin = "everyone"\n', "namespaces.swap.join"),
        "unknown section": ("[sever]\nport = 1\n", "sever"),
    }
    variables = {
        "unknown variable": ({"REALTIME_SERVER_BOGUS": "1"}, "REALTIME_SERVER_BOGUS"),
        "bad int variable": ({"REALTIME_SERVER_PORT": "abc"}, "REALTIME_SERVER_PORT"),
    }
    cases: list[tuple[str, list[str], dict[str, str], str]] = []
    for name, (text, setting) in files.items():
        path = tmp_path / f"{name.replace(' ', '_')}.toml"
        path.write_text(text)
        cases.append((name, ["--config", str(path)], cli_env(**base), setting))
    empty = tmp_path / "empty.toml"
    empty.write_text("")
    for name, (extra, setting) in variables.items():
        cases.append((name, ["--config", str(empty)], cli_env(**{**base, **extra}), setting))
    missing = str(tmp_path / "missing.toml")
    cases.append(("missing file", ["--config", missing], cli_env(**base), missing))

    results = await asyncio.gather(
        *(run_cli_async("serve", *args, env=env, timeout=60) for _, args, env, _ in cases)
    )
    wrong = [
        (name, code, output[-300:])
        for (name, _, _, setting), (code, output) in zip(cases, results, strict=True)
        if code == 0 or setting not in output
    ]
    assert not wrong, wrong
    # the same base settings with nothing wrong do start (so the cases above fail for
    # their setting alone)
    server = ServerProcess(tmp_path / "good", env=base, port=int(base["REALTIME_SERVER_PORT"]))
    try:
        await asyncio.to_thread(server.start)
        assert await asyncio.to_thread(server.terminate) == 0
    finally:
        server.kill()
