"""The wheel, built from a copy of the checkout, installs into a new venv and works there.

The new venv is made without ``--system-site-packages`` and the wheel is installed with
``--no-deps``; the dependencies come from this interpreter's site-packages through a
``.pth`` file, so the test needs no network and no time to install them. That the wheel
*declares* them is checked on its metadata instead. Every command runs from an empty
directory outside the checkout, with settings from the environment only.
"""

from __future__ import annotations

import contextlib
import email.parser
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import IO

import jwt
import orjson
import pytest
from packaging.requirements import Requirement

from tests.packaging.pins import ROOT, pyproject
from tests.services import free_port

pytestmark = pytest.mark.slow

PROJECT = pyproject()["project"]
BUILD_REQUIRES = [Requirement(text) for text in pyproject()["build-system"]["requires"]]
PACKAGES = ("protocol", "storage", "realtime", "loadtest")
SECRET = "packaging-test-secret-" + "x" * 20

# What a developer's checkout may hold that is no source of the package.
_NOT_SOURCES = shutil.ignore_patterns(
    ".git",
    ".venv",
    "venv",
    "node_modules",
    "data",
    "results",
    "build",
    "dist",
    "*.egg-info",
    "__pycache__",
    "*.pyc",
    ".mypy_cache",
    ".ruff_cache",
    ".pytest_cache",
    ".hypothesis",
)


@dataclass(frozen=True)
class Installed:
    wheel: Path
    venv: Path
    site_packages: Path

    def script(self, name: str) -> str:
        return str(self.venv / "bin" / name)


def _run(command: list[str], *, cwd: Path, timeout: float = 180.0) -> str:
    try:
        done = subprocess.run(
            command,
            cwd=cwd,
            env=_clean_env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        raise AssertionError(f"{command} did not finish in {timeout} s") from None
    assert done.returncode == 0, f"{command} exited {done.returncode}:\n{done.stdout}{done.stderr}"
    return done.stdout


def _clean_env(**settings: str) -> dict[str, str]:
    """This environment without settings or paths that could reach the checkout."""
    dropped = ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV")
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("REALTIME_") and k not in dropped
    }
    env.update(settings)
    return env


def _check_build_tools() -> None:
    for requirement in BUILD_REQUIRES:
        try:
            version = metadata.version(requirement.name)
        except metadata.PackageNotFoundError:
            version = "none"
        if version == "none" or not requirement.specifier.contains(version):
            pytest.fail(
                f"building needs {requirement}, this environment has {requirement.name} "
                f"{version}: `make setup-dev` installs requirements-dev.txt"
            )


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    _check_build_tools()
    base = tmp_path_factory.mktemp("packaging")
    # Built from a copy: setuptools writes build/ and *.egg-info/ next to the sources.
    source = base / "source"
    shutil.copytree(ROOT, source, ignore=_NOT_SOURCES)
    wheels = base / "wheels"
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--quiet",
            "--wheel-dir",
            str(wheels),
            str(source),
        ],
        cwd=base,
    )
    (wheel,) = wheels.glob("*.whl")

    venv = base / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=base)
    python = str(venv / "bin" / "python")
    site_packages = Path(
        _run(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=base
        ).strip()
    )
    # The dependencies this interpreter has, appended to the new venv's path (after its
    # own site-packages, so the installed wheel comes first).
    ours = dict.fromkeys(sysconfig.get_paths()[name] for name in ("purelib", "platlib"))
    (site_packages / "dependencies.pth").write_text("".join(f"{path}\n" for path in ours))
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            python,
            "install",
            "--no-deps",
            "--no-index",
            "--quiet",
            str(wheel),
        ],
        cwd=base,
    )
    return Installed(wheel=wheel, venv=venv, site_packages=site_packages)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """An empty directory outside the checkout, with no config file."""
    directory = tmp_path / "empty"
    directory.mkdir()
    return directory


def _wheel_names(wheel: Path) -> set[str]:
    with zipfile.ZipFile(wheel) as archive:
        return set(archive.namelist())


def _dist_info_file(wheel: Path, name: str) -> str:
    with zipfile.ZipFile(wheel) as archive:
        (found,) = [n for n in archive.namelist() if n.endswith(f".dist-info/{name}")]
        return archive.read(found).decode()


def test_the_wheel_holds_the_packages_and_all_their_files(installed: Installed) -> None:
    names = _wheel_names(installed.wheel)
    top_level = {name.split("/", 1)[0] for name in names}
    dist_info = f"{PROJECT['name']}-{PROJECT['version']}.dist-info"
    assert top_level == {*PACKAGES, dist_info}
    # Every file under a package (subpackages, migrations, static files), so a new one
    # that the build leaves out fails here rather than in production.
    missing = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*")):
            relative = path.relative_to(ROOT)
            if (
                path.is_dir()
                or "__pycache__" in relative.parts
                or any(part.startswith(".") for part in relative.parts)  # editors' files
                or path.suffix == ".pyc"
                or path.name == "README.md"
            ):
                continue
            if relative.as_posix() not in names:
                missing.append(relative.as_posix())
    assert missing == [], "not in the wheel; add to pyproject's package-data or packages"
    assert "storage/migrations/sqlite/0001_initial.sql" in names
    assert "storage/migrations/postgres/0001_initial.sql" in names


def test_the_wheel_declares_the_runtime_dependencies_and_scripts(installed: Installed) -> None:
    info = email.parser.Parser().parsestr(_dist_info_file(installed.wheel, "METADATA"))
    required = [Requirement(text) for text in info.get_all("Requires-Dist") or []]
    runtime = sorted(str(r) for r in required if r.marker is None)
    assert runtime == sorted(str(Requirement(text)) for text in PROJECT["dependencies"])
    assert set(info.get_all("Provides-Extra") or []) == {"dev", "bench"}
    entry_points = _dist_info_file(installed.wheel, "entry_points.txt")
    assert "realtime = realtime.cli:main" in entry_points
    assert "realtime-loadtest = loadtest.cli:main" in entry_points


def test_the_packages_import_from_the_venv_not_the_checkout(
    installed: Installed, workdir: Path
) -> None:
    code = (
        "import json, protocol, storage, realtime, loadtest, realtime.cli, storage.migrate;"
        "print(json.dumps({m.__name__: m.__file__ for m in "
        "(protocol, storage, realtime, loadtest, realtime.cli, storage.migrate)}))"
    )
    found = orjson.loads(_run([installed.script("python"), "-c", code], cwd=workdir))
    for module, file in found.items():
        assert Path(file).is_relative_to(installed.site_packages), f"{module} from {file}"


def test_version_is_the_installed_distributions(installed: Installed, workdir: Path) -> None:
    printed = _run([installed.script("realtime"), "--version"], cwd=workdir)
    assert printed.strip() == f"realtime {PROJECT['version']}"


def test_version_from_a_checkout_says_so() -> None:
    env = _clean_env(PYTHONPATH=str(ROOT))
    done = subprocess.run(
        [sys.executable, "-m", "realtime", "--version"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"realtime {PROJECT['version']} (checkout)"


def test_serve_from_an_empty_directory_answers_healthz(installed: Installed, workdir: Path) -> None:
    port = free_port()
    env = _clean_env(REALTIME_SERVER_PORT=str(port), REALTIME_AUTH_SECRET=SECRET)
    log_path = workdir.parent / "serve.log"
    with (
        log_path.open("wb") as log,
        _process([installed.script("realtime"), "serve"], cwd=workdir, env=env, log=log) as process,
    ):
        health = _wait_healthy(port, process, log_path)
        assert health["status"] == "ok"
        process.send_signal(signal.SIGTERM)
        try:
            code = process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"no exit after SIGTERM:\n{log_path.read_text()}") from None
    assert code == 0, log_path.read_text()
    # The embedded default: SQLite under the working directory.
    assert (workdir / "data" / "realtime.db").is_file()


def test_migrate_creates_the_schema(installed: Installed, workdir: Path) -> None:
    database = workdir / "migrated.db"
    env = _clean_env(REALTIME_STORAGE_DSN=f"sqlite:///{database}")
    done = subprocess.run(
        [installed.script("realtime"), "migrate"],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    with contextlib.closing(sqlite3.connect(database)) as connection:
        versions = [row[0] for row in connection.execute("SELECT version FROM schema_migrations")]
        rows = connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        tables = {row[0] for row in rows}
    shipped = sorted((installed.site_packages / "storage" / "migrations" / "sqlite").glob("*.sql"))
    assert len(versions) == len(shipped) >= 1
    assert {"rooms", "messages"} <= tables


def test_token_is_signed_with_the_secret_from_the_environment(
    installed: Installed, workdir: Path
) -> None:
    env = _clean_env(REALTIME_AUTH_SECRET=SECRET)
    done = subprocess.run(
        [installed.script("realtime"), "token", "alice"],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    claims = jwt.decode(done.stdout.strip(), SECRET, algorithms=["HS256"])
    assert claims["sub"] == "alice"


def test_the_load_generator_script_runs(installed: Installed, workdir: Path) -> None:
    printed = _run([installed.script("realtime-loadtest"), "--help"], cwd=workdir)
    assert "fanout" in printed


@contextlib.contextmanager
def _process(
    command: list[str], *, cwd: Path, env: dict[str, str], log: IO[bytes]
) -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen(
        command, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)


def _wait_healthy(port: int, process: subprocess.Popen[bytes], log_path: Path) -> dict[str, str]:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"serve exited {process.returncode}:\n{log_path.read_text()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as reply:
                assert reply.status == 200
                health: dict[str, str] = orjson.loads(reply.read())
                return health
        except urllib.error.HTTPError as error:
            error.close()
            raise AssertionError(f"/healthz answered {error.code}") from None
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"/healthz did not answer in 90 s:\n{log_path.read_text()}")
