"""Real server processes for end-to-end tests (and benchmarks): start, SIGTERM, kill."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import orjson

from tests.services import free_port

ROOT = Path(__file__).resolve().parent.parent
SECRET = "test-secret-" + "x" * 20
SERVICE_KEY = "test-service-key-0123456789"

# The notification types the tests send, declared as an operator would: the server
# refuses a type it does not know (unless notifications.free_types is on).
TEST_TYPES = (
    *("like", "comment", "follow", "post", "ping", "noise", "t", "x", "new", "live"),
    *(f"n{i}" for i in range(8)),
    *(f"t{i}" for i in range(3)),
)
TYPES_CONFIG = "".join(f"\n[notifications.types.{name}]\n" for name in TEST_TYPES)


def listens(pid: int, port: int) -> bool:
    """Whether process ``pid`` holds the socket listening on 127.0.0.1:``port`` (Linux)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as lines:
            for line in list(lines)[1:]:
                fields = line.split()
                local, state, inode = fields[1], fields[3], fields[9]
                if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                    inodes.add(f"socket:[{inode}]")
    try:
        fds = list(Path(f"/proc/{pid}/fd").iterdir())
    except FileNotFoundError:  # it exited
        return False
    for fd in fds:
        try:
            if os.readlink(fd) in inodes:
                return True
        except FileNotFoundError:  # closed since the listing
            continue
    return False


class ServerProcess:
    """``python -m realtime serve`` in a child process, configured by environment."""

    def __init__(
        self,
        workdir: Path,
        *,
        dsn: str = "",
        broker_url: str = "",
        env: dict[str, str] | None = None,
        config_text: str | None = None,
        port: int | None = None,
        name: str = "server",
    ) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.name = name
        self.dsn = dsn or f"sqlite:///{workdir / 'realtime.db'}"
        self.config_path = workdir / f"{name}.toml"
        # Appended: a test's own [notifications] settings come first and still apply.
        self.config_path.write_text((config_text or "") + TYPES_CONFIG)
        self.log_path = workdir / f"{name}.log"
        self.env = {
            "REALTIME_SERVER_PORT": str(self.port),
            "REALTIME_SERVER_INSTANCE_ID": name,
            "REALTIME_AUTH_SECRET": SECRET,
            "REALTIME_AUTH_SERVICE_KEYS": SERVICE_KEY,
            "REALTIME_STORAGE_DSN": self.dsn,
            "REALTIME_BROKER_URL": broker_url,
            # A loaded machine can hold a server's loop up for seconds: a test that is
            # not about it must not get 503 for it (test_pacing.py sets it).
            "REALTIME_SERVER_MAX_LAG": "0",
            **(env or {}),
        }
        self.process: subprocess.Popen[bytes] | None = None
        # Prepended to the command, e.g. ["taskset", "-c", "0"] to pin it to a CPU.
        self.command_prefix: list[str] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def start(self, timeout: float = 30.0) -> None:
        environment = {k: v for k, v in os.environ.items() if not k.startswith("REALTIME_")}
        environment.update(self.env)
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [
                *self.command_prefix,
                sys.executable,
                "-m",
                "realtime",
                "serve",
                "--config",
                str(self.config_path),
            ],
            cwd=ROOT,
            env=environment,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited at start:\n{self.log()}")
            try:
                with urllib.request.urlopen(f"{self.url}/healthz", timeout=1) as response:
                    # free_port can hand out a port another test's server takes first:
                    # its /healthz must not pass for ours.
                    if response.status == 200 and listens(self.process.pid, self.port):
                        return
            except OSError:
                pass
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"{self.name} did not answer /healthz in {timeout}s:\n{self.log()}")

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait; returns the exit code."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.terminate(timeout=15)

    def restart(self) -> None:
        self.stop()
        self.start()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    # Credentials ---------------------------------------------------------------------

    def token(self, user: str, *, ttl: float = 3600, **claims: Any) -> str:
        now = int(time.time())
        payload: dict[str, Any] = {"sub": user, "iat": now, "exp": now + ttl, **claims}
        return jwt.encode(payload, SECRET, algorithm="HS256")

    # REST ------------------------------------------------------------------------------

    async def rest(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        key: str | None = SERVICE_KEY,
        raw: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any]:
        """One HTTP call; returns (status, parsed JSON, or text, or None)."""
        async with Http(self) as http:
            return await http.call(method, path, body, key=key, raw=raw, headers=headers)


class Http:
    """One aiohttp session for many REST calls (faster than ``ServerProcess.rest``)."""

    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))

    async def __aenter__(self) -> Http:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.session.close()
        # Closing a transport closes its socket in a callback of the next loop
        # iteration; a test that ends right here would close the loop first and
        # leave the socket to the collector (a ResourceWarning, an error here).
        await asyncio.sleep(0)

    async def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        key: str | None = SERVICE_KEY,
        raw: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any]:
        status, _, data = await self.full(method, path, body, key=key, raw=raw, headers=headers)
        if not data:
            return status, None
        try:
            return status, orjson.loads(data)
        except orjson.JSONDecodeError:
            return status, data.decode(errors="replace")

    async def full(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        key: str | None = SERVICE_KEY,
        raw: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        """(status, headers, raw body) of one call."""
        data = raw if raw is not None else (None if body is None else orjson.dumps(body))
        all_headers = dict(headers or {})
        if data is not None:
            all_headers.setdefault("Content-Type", "application/json")
        if key is not None:
            all_headers["Authorization"] = f"Bearer {key}"
        # aiohttp warns about large raw bytes bodies (and warnings are errors here)
        payload: bytes | io.BytesIO | None = (
            io.BytesIO(data) if data and len(data) > 2**19 else data
        )
        async with self.session.request(
            method, self.server.url + path, data=payload, headers=all_headers
        ) as response:
            return response.status, dict(response.headers), await response.read()


def unique(prefix: str) -> str:
    """A fresh id so tests sharing a server never share rooms or users."""
    return f"{prefix}{secrets.token_hex(4)}"
