"""Node.js for the tests that run JavaScript: the binary, and a package's devDependencies."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

NODE_MAJOR = 20


def node_major(node: str) -> int:
    version = subprocess.run(
        [node, "--version"], capture_output=True, text=True, check=True, timeout=30
    ).stdout
    return int(version.strip().lstrip("v").split(".")[0])


def node_with_packages(package: Path, why: str, env: dict[str, str] | None = None) -> str:
    """The node binary (>= 20), after ``npm ci`` in ``package`` when its lock file is newer.

    Fails the test (not skips: these are part of the suite) when node is missing.
    """
    path = shutil.which("node")
    if path is None:
        pytest.fail(f"{why} need Node.js >= {NODE_MAJOR} (`node` on PATH)")
    if (major := node_major(path)) < NODE_MAJOR:
        pytest.fail(f"{why} need Node.js >= {NODE_MAJOR}, found {major}")
    installed = package / "node_modules" / ".package-lock.json"
    lock = package / "package-lock.json"
    if not installed.exists() or installed.stat().st_mtime < lock.stat().st_mtime:
        npm = subprocess.run(
            ["npm", "ci", "--prefix", str(package), "--no-audit", "--no-fund"],
            env=os.environ | (env or {}),
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        if npm.returncode != 0:
            pytest.fail(f"npm ci failed:\n{npm.stdout}\n{npm.stderr}")
    return path
