"""The demo's server side over real sockets: off by default, its files, and who may
sign in (POST /demo/token): only unforwarded loopback requests to a loopback listener."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import jwt
import pytest

from realtime.demo.loopback import refusal
from tests.server import ROOT, SECRET, Http, ServerProcess

DEMO = ROOT / "realtime" / "demo"
CLIENT = ROOT / "clients" / "js" / "realtime.js"


@pytest.fixture(scope="module")
def demo_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = ServerProcess(
        tmp_path_factory.mktemp("demo"), env={"REALTIME_DEMO_ENABLED": "true"}, name="demo"
    )
    server.start()
    yield server
    server.stop()


def test_the_page_serves_the_js_client_unchanged() -> None:
    """realtime/demo/realtime.js (in the wheel) is clients/js/realtime.js, byte for byte."""
    assert (DEMO / "realtime.js").read_bytes() == CLIENT.read_bytes(), (
        "the demo's copy of the client differs: cp clients/js/realtime.js realtime/demo/"
    )


async def test_off_by_default(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path)
    server.start()
    try:
        async with Http(server) as http:
            for method, path in [("GET", "/demo/"), ("GET", "/demo/realtime.js")]:
                status, _, _ = await http.full(method, path, key=None)
                assert status == 404, path
            status, _ = await http.call("POST", "/demo/token", {"user": "alice"}, key=None)
            assert status in (404, 405)
    finally:
        server.stop()
    assert "DEMO MODE" not in server.log()


async def test_files_and_a_loud_warning(demo_server: ServerProcess) -> None:
    assert "DEMO MODE IS ON" in demo_server.log()
    async with Http(demo_server) as http:
        status, headers, body = await http.full("GET", "/demo/", key=None)
        assert status == 200
        assert headers["Content-Type"].startswith("text/html")
        assert "default-src 'none'" in headers["Content-Security-Policy"]
        assert b'<script type="module" src="demo.js">' in body
        status, headers, body = await http.full("GET", "/demo/realtime.js", key=None)
        assert (status, body) == (200, CLIENT.read_bytes())
        assert headers["Content-Type"].startswith("text/javascript")
        for name in ("demo.js", "demo.css"):
            status, _, body = await http.full("GET", f"/demo/{name}", key=None)
            assert (status, body) == (200, (DEMO / name).read_bytes())
        for path in ("/demo/routes.py", "/demo/__init__.py", "/demo/..%2Fapp.py"):
            status, _, _ = await http.full("GET", path, key=None)
            assert status == 404, path


async def test_sign_in_mints_a_token_and_grants_the_room(demo_server: ServerProcess) -> None:
    async with Http(demo_server) as http:
        status, answer = await http.call("POST", "/demo/token", {"user": "dana"}, key=None)
        assert status == 200, answer
        assert answer["room"] == "swap:demo"
        claims = jwt.decode(answer["token"], SECRET, algorithms=["HS256"])
        assert claims["sub"] == "dana"
        assert claims["exp"] == answer["expires_at"]
        status, members = await http.call("GET", "/api/v1/rooms/swap:demo/members")
        assert status == 200
        assert "dana" in str(members)
        status, answer = await http.call("POST", "/demo/token", {"user": "no spaces"}, key=None)
        assert status == 400, answer


@pytest.mark.parametrize(
    ("headers", "why"),
    [
        ({"X-Forwarded-For": "203.0.113.9"}, "forwarded"),
        ({"Forwarded": "for=203.0.113.9"}, "forwarded"),
        ({"X-Real-IP": "203.0.113.9"}, "forwarded"),
        ({"Host": "demo.example.com"}, "Host header"),
        ({"Origin": "http://demo.example.com"}, "another origin"),
    ],
)
async def test_sign_in_refuses_what_may_not_be_local(
    demo_server: ServerProcess, headers: dict[str, str], why: str
) -> None:
    async with Http(demo_server) as http:
        status, answer = await http.call(
            "POST", "/demo/token", {"user": "mallory"}, key=None, headers=headers
        )
    assert status == 403, answer
    assert why in answer["error"]["message"]


async def test_sign_in_from_the_page_itself(demo_server: ServerProcess) -> None:
    origin = f"http://127.0.0.1:{demo_server.port}"
    async with Http(demo_server) as http:
        status, answer = await http.call(
            "POST", "/demo/token", {"user": "erin"}, key=None, headers={"Origin": origin}
        )
    assert status == 200, answer


async def test_poke_needs_a_user_token_and_notifies(demo_server: ServerProcess) -> None:
    async with Http(demo_server) as http:
        status, _ = await http.call("POST", "/demo/poke", {"to": "gus"}, key=None)
        assert status == 401
        status, answer = await http.call("POST", "/demo/token", {"user": "fay"}, key=None)
        assert status == 200
        status, answer = await http.call(
            "POST", "/demo/poke", {"to": "gus", "text": "hi"}, key=answer["token"]
        )
        assert (status, answer) == (202, {"recipients": 1})
        status, page = await http.call("GET", "/api/v1/users/gus/notifications")
    assert status == 200
    (item,) = page["items"]
    assert (item["type"], item["actor"], item["data"]["text"]) == ("poke", "fay", "hi")


def _refusal(listen_host: str = "127.0.0.1", peer: object = ("127.0.0.1", 50000)) -> str | None:
    return refusal(
        listen_host=listen_host,
        peer=peer,
        host="127.0.0.1",
        authority="127.0.0.1:8080",
        headers={},
    )


def test_refusal_needs_a_loopback_listener_and_peer() -> None:
    for host in ("127.0.0.1", "127.0.0.2", "localhost", "::1", "[::1]"):
        assert _refusal(listen_host=host) is None, host
    for host in ("0.0.0.0", "", "::", "192.0.2.1", "demo.example.com"):
        why = _refusal(listen_host=host)
        assert why is not None
        assert "not a loopback address" in why
    for peer in (("192.0.2.7", 1), ("::ffff:192.0.2.7", 1, 0, 0), None, "x", ()):
        assert _refusal(peer=peer) == "the request did not come over loopback", peer
    ipv6 = refusal(
        listen_host="::1", peer=("::1", 1, 0, 0), host="::1", authority="[::1]:8080", headers={}
    )
    assert ipv6 is None
