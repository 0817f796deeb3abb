"""Helpers for the REST, notification, lifecycle and CLI end-to-end tests.

Kept apart from ``tests/client.py`` and ``tests/server.py`` (shared harness): only
what these test modules need on top of it.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from tests.server import ROOT


def assert_error(reply: tuple[int, Any], status: int, code: str) -> None:
    """A REST error reply: the status and ``{"error": {"code", "message"}}``."""
    got_status, body = reply
    assert (got_status, _code(body)) == (status, code), f"got {got_status} {body!r}"
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]


def _code(body: Any) -> Any:
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return body["error"].get("code")
    return body


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
