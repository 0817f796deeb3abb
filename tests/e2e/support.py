"""Helpers for the REST, notification, lifecycle and CLI end-to-end tests.

Kept apart from ``tests/client.py`` and ``tests/server.py`` (shared harness): only
what these test modules need on top of it.
"""

from __future__ import annotations

import asyncio
import io
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from prometheus_client.parser import text_string_to_metric_families

from tests.server import ROOT, SERVICE_KEY, ServerProcess


def assert_error(reply: tuple[int, Any], status: int, code: str) -> None:
    """A REST error reply: the status and ``{"error": {"code", "message"}}``."""
    got_status, body = reply
    assert (got_status, _code(body)) == (status, code), f"got {got_status} {body!r}"
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]


def _code(body: Any) -> Any:
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return body["error"].get("code")
    return body


class Http:
    """One aiohttp session for many REST calls (faster than ``ServerProcess.rest``)."""

    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))

    async def __aenter__(self) -> Http:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.session.close()

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


def metric(text: str, sample_name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text (0 when absent); parsing checks the format."""
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == sample_name and all(
                sample.labels.get(k) == v for k, v in labels.items()
            ):
                total += sample.value
    return total


async def eventually(
    check: Callable[[], Awaitable[bool]], *, timeout: float, interval: float = 0.05
) -> float:
    """Poll ``check`` until it returns True; returns the seconds it took."""
    started = time.monotonic()
    while True:
        if await check():
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)


def cli_env(**settings: str) -> dict[str, str]:
    """The test process's environment without REALTIME_*, plus the given settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("REALTIME_")}
    env["PYTHONPATH"] = str(ROOT)
    env.update(settings)
    return env


def run_cli(
    *args: str, env: dict[str, str], cwd: Path = ROOT, timeout: float = 30.0
) -> subprocess.CompletedProcess[str]:
    """``python -m realtime ARGS``; a hang (e.g. ``serve`` that starts) fails the test."""
    try:
        return subprocess.run(
            [sys.executable, "-m", "realtime", *args],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as error:
        raise AssertionError(f"python -m realtime {' '.join(args)} did not exit: {error}") from None


async def run_cli_async(
    *args: str, env: dict[str, str], cwd: Path = ROOT, timeout: float = 30.0
) -> tuple[int, str]:
    """``python -m realtime ARGS`` without blocking the loop: (exit code, stdout + stderr)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "realtime",
        *args,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        async with asyncio.timeout(timeout):
            output, _ = await process.communicate()
    except TimeoutError:
        process.kill()
        await process.communicate()
        raise AssertionError(f"python -m realtime {' '.join(args)} did not exit") from None
    assert process.returncode is not None
    return process.returncode, output.decode(errors="replace")
