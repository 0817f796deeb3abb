"""Throwaway PostgreSQL, Redis, Redis Cluster and nginx servers, from the installed binaries.

Used by the pytest fixtures in ``tests/conftest.py`` and by benchmark scripts, so
this module imports nothing from pytest. Every server:

- listens on 127.0.0.1 only, on a free port that stays the same across restarts
  (clients reconnect to the same address);
- lives in its own temporary directory, removed by ``close()``;
- runs in its own process group, so ``kill()`` takes down the whole process tree
  at once, like a crash;
- is killed at interpreter exit if the caller forgot to close it, and a later run
  removes whatever a run that died without cleaning up (SIGKILL) left behind.

Every wait is bounded: ``start()`` and ``stop()`` raise ``ServiceError`` with the
tail of the server's log when the server does not get there in time.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Self

from deploy.nginx_conf import TEMPLATE as NGINX_TEMPLATE
from deploy.nginx_conf import render as render_nginx_conf

_DIR_PREFIX = "realtime-svc-"
_OWNER_FILE = "owner"
_INSTALL_HINT = "run `make test`, which installs the test servers"


class ServiceError(RuntimeError):
    """A throwaway server could not be found, started or stopped."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, belongs to another user
    return True


def _reap_orphans() -> None:
    """Kill servers of earlier runs whose owning process died without cleaning up.

    Each service directory names the Python process that owns it and the server's
    process group leader; the group is killed only when the owner is gone and the
    leader still runs inside that directory (its cwd), so a reused pid is never hit.
    """
    for directory in Path(tempfile.gettempdir()).glob(_DIR_PREFIX + "*"):
        try:
            owner_pid, server_pid = (int(x) for x in (directory / _OWNER_FILE).read_text().split())
        except (OSError, ValueError):
            continue  # being created right now, or not ours
        if _pid_alive(owner_pid):
            continue
        if server_pid > 0:
            try:
                cwd = os.readlink(f"/proc/{server_pid}/cwd")
            except OSError:
                cwd = ""
            if cwd.startswith(str(directory)):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(server_pid, signal.SIGKILL)
        shutil.rmtree(directory, ignore_errors=True)


_live: set[_Service] = set()
_live_lock = threading.Lock()
_reaped = False


def _cleanup_at_exit() -> None:
    with _live_lock:
        services = list(_live)
    for service in services:
        service.close()


atexit.register(_cleanup_at_exit)


class _Managed:
    """``with``: started on entry (closed again if that fails), closed on exit."""

    def start(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class _Service(_Managed):
    """One server process in its own directory and process group."""

    name = "service"
    start_timeout = 30.0
    stop_timeout = 30.0

    def __init__(self) -> None:
        self._port = 0
        self._dir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    # Lifecycle ---------------------------------------------------------------------

    @property
    def port(self) -> int:
        if not self._port:
            raise ServiceError(f"{self.name} was never started")
        return self._port

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        """Start the server (creating it on first call) and wait until it serves."""
        if self.running:
            return
        first = self._dir is None
        if first:
            self._create()
        # Only a fresh server may move to another port: once clients know the
        # port, a restart must come back on it.
        for attempt in range(3):
            if first and attempt:
                self._choose_ports()
            self._spawn()
            try:
                self._wait_ready()
                break
            except ServiceError:
                self._kill_group()
                if not first or attempt == 2 or "already in use" not in self.log_tail():
                    raise
        if first:
            self._after_first_start()

    def stop(self) -> None:
        """Shut the server down cleanly and wait for it; SIGKILL if it hangs."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            self._reset_proc()
            return
        self._request_stop(proc)
        try:
            proc.wait(self.stop_timeout)
        except subprocess.TimeoutExpired:
            self._kill_group()
            raise ServiceError(
                f"{self.name} did not stop within {self.stop_timeout}s; killed it"
            ) from None
        finally:
            self._reset_proc()

    def kill(self) -> None:
        """SIGKILL the server's whole process group, like a power cut of the process."""
        self._kill_group()

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        """Stop the server (killing it if it will not stop) and delete its directory."""
        try:
            self.stop()
        finally:
            # Also when stop() failed: nothing may outlive close().
            self._kill_group()
            if self._dir is not None:
                shutil.rmtree(self._dir, ignore_errors=True)
                self._dir = None
            with _live_lock:
                _live.discard(self)

    def log_tail(self, size: int = 4000) -> str:
        if self._dir is None:
            return ""
        try:
            data = (self._dir / f"{self.name}.log").read_bytes()
        except OSError:
            return ""
        return data[-size:].decode(errors="replace")

    # Hooks for subclasses ------------------------------------------------------------

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _prepare(self, directory: Path) -> None:
        """Initialize the directory before the first start."""

    def _is_ready(self) -> bool:
        raise NotImplementedError

    def _after_first_start(self) -> None:
        """Set up what a fresh server needs once it serves."""

    def _request_stop(self, proc: subprocess.Popen[bytes]) -> None:
        proc.send_signal(signal.SIGTERM)

    def _spawn_user(self) -> str | None:
        return None

    def _choose_ports(self) -> None:
        """Pick the free port(s) a fresh server listens on; kept across restarts."""
        self._port = free_port()

    @property
    def pid(self) -> int:
        """The server's process id (its process group leader)."""
        if self._proc is None:
            raise ServiceError(f"{self.name} is not running")
        return self._proc.pid

    @property
    def directory(self) -> Path:
        if self._dir is None:
            raise ServiceError(f"{self.name} has no directory (closed or never started)")
        return self._dir

    # Internals -------------------------------------------------------------------------

    def _create(self) -> None:
        global _reaped  # noqa: PLW0603 -- once per process, guarded by the lock
        with _live_lock:
            if not _reaped:
                _reaped = True
                _reap_orphans()
            _live.add(self)
        self._dir = Path(tempfile.mkdtemp(prefix=_DIR_PREFIX + self.name + "-"))
        self._write_owner(0)
        self._choose_ports()
        try:
            self._prepare(self._dir)
        except BaseException:
            self.close()
            raise

    def _write_owner(self, server_pid: int) -> None:
        (self.directory / _OWNER_FILE).write_text(f"{os.getpid()} {server_pid}\n")

    def _spawn(self) -> None:
        directory = self.directory
        self._log = open(directory / f"{self.name}.log", "ab")  # noqa: SIM115 -- lives with the process
        user = self._spawn_user()
        self._proc = subprocess.Popen(
            self._command(),
            cwd=directory,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            # Its own process group: kill() reaches every child, and a Ctrl-C
            # meant for the test run does not reach the server.
            start_new_session=True,
            user=user,
            group=user,
            extra_groups=[] if user else None,
        )
        self._write_owner(self._proc.pid)

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            proc = self._proc
            if proc is None or proc.poll() is not None:
                raise ServiceError(f"{self.name} exited while starting:\n{self.log_tail()}")
            if self._is_ready():
                return
            time.sleep(0.05)
        raise ServiceError(
            f"{self.name} not ready within {self.start_timeout}s:\n{self.log_tail()}"
        )

    def _kill_group(self) -> None:
        proc = self._proc
        if proc is not None:
            # The group leader is our unreaped child until wait() below, so its
            # pid (and the group id) cannot have been reused. PostgreSQL backends
            # call setsid(), so they are outside the group: kill them by parentage.
            children = _child_pids(proc.pid)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            for child in children:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child, signal.SIGKILL)
            try:
                proc.wait(self.stop_timeout)
            except subprocess.TimeoutExpired as exc:
                raise ServiceError(f"{self.name} survived SIGKILL") from exc
        self._reset_proc()

    def _reset_proc(self) -> None:
        if self._proc is not None and self._proc.poll() is not None:
            self._proc = None
        if self._proc is None and self._log is not None:
            self._log.close()
            self._log = None


def _child_pids(parent: int) -> list[int]:
    """Pids whose parent is ``parent`` (read from /proc)."""
    children = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == parent:
            children.append(int(entry.name))
    return children


def _run(
    args: Sequence[str], *, timeout: float, what: str, env: dict[str, str] | None = None
) -> None:
    try:
        result = subprocess.run(
            args,
            capture_output=True,
            timeout=timeout,
            check=False,
            stdin=subprocess.DEVNULL,
            env=env,
        )
    except subprocess.TimeoutExpired as exc:
        raise ServiceError(f"{what} did not finish within {timeout}s") from exc
    if result.returncode != 0:
        output = (result.stdout + result.stderr).decode(errors="replace")
        raise ServiceError(f"{what} failed with exit code {result.returncode}:\n{output}")


def _find_postgres_bin() -> Path:
    candidates: list[Path] = []
    if env := os.environ.get("REALTIME_PG_BIN"):
        candidates.append(Path(env))
    if on_path := shutil.which("postgres"):
        candidates.append(Path(on_path).parent)
    installed = [p for p in Path("/usr/lib/postgresql").glob("*/bin") if p.parent.name.isdigit()]
    candidates.extend(sorted(installed, key=lambda p: int(p.parent.name), reverse=True))
    for directory in candidates:
        if all((directory / tool).is_file() for tool in ("initdb", "postgres", "psql")):
            return directory
    raise ServiceError(
        "PostgreSQL server binaries (initdb, postgres, psql) not found on PATH, in "
        f"/usr/lib/postgresql/*/bin or in $REALTIME_PG_BIN; {_INSTALL_HINT}"
    )


_DB_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


class PostgresServer(_Service):
    """A throwaway PostgreSQL cluster with trust auth and a database ``realtime``.

    As root the server runs as the ``postgres`` system user (PostgreSQL refuses
    root): ``initdb`` through ``runuser``, the postmaster as our direct child with
    its uid dropped, so that we can signal and reap it ourselves (``runuser`` would
    sit in between and turn a fast-shutdown SIGINT into a smart-shutdown SIGTERM).
    """

    name = "postgres"
    database = "realtime"

    def __init__(self) -> None:
        super().__init__()
        self._bin = _find_postgres_bin()
        self._as_root = os.geteuid() == 0
        if self._as_root and shutil.which("runuser") is None:
            raise ServiceError(
                f"runuser not found (PostgreSQL cannot run as root); {_INSTALL_HINT}"
            )

    @property
    def dsn(self) -> str:
        return self.dsn_for(self.database)

    def dsn_for(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """Create an empty database and return its DSN."""
        self._psql(f'CREATE DATABASE "{self._check_name(name)}"')
        return self.dsn_for(name)

    def drop_database(self, name: str) -> None:
        """Drop a database, disconnecting whoever still uses it."""
        self._psql(f'DROP DATABASE IF EXISTS "{self._check_name(name)}" WITH (FORCE)')

    @staticmethod
    def _check_name(name: str) -> str:
        if not _DB_NAME.fullmatch(name):
            raise ValueError(f"database name must match {_DB_NAME.pattern}: {name!r}")
        return name

    def _psql(self, sql: str) -> None:
        _run(
            [
                str(self._bin / "psql"),
                "-X",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-c",
                sql,
            ],
            timeout=60,
            what=f"psql {sql!r}",
            env={**os.environ, "PGCONNECT_TIMEOUT": "10"},
        )

    def _spawn_user(self) -> str | None:
        return "postgres" if self._as_root else None

    def _prepare(self, directory: Path) -> None:
        if self._as_root:
            shutil.chown(directory, "postgres", "postgres")
        initdb = [
            str(self._bin / "initdb"),
            "-D",
            str(directory / "data"),
            "-U",
            "postgres",
            "--auth=trust",
            "--encoding=UTF8",
            "--no-sync",
        ]
        if self._as_root:
            initdb = ["runuser", "-u", "postgres", "--", *initdb]
        # A linguistic default collation, as production databases have, so that
        # tests catch SQL that sorts or compares ids in the database's collation.
        icu = ["--locale-provider=icu", "--icu-locale=en-US", "--locale=C.UTF-8"]
        try:
            _run([*initdb, *icu], timeout=120, what="initdb")
        except ServiceError:
            # A server built without ICU (or older than 15): the C locale will do.
            shutil.rmtree(directory / "data", ignore_errors=True)
            _run(initdb, timeout=120, what="initdb")

    def _command(self) -> list[str]:
        directory = self.directory
        return [
            str(self._bin / "postgres"),
            "-D",
            str(directory / "data"),
            "-p",
            str(self.port),
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            f"unix_socket_directories={directory}",
            "-c",
            "max_connections=200",
        ]

    def _request_stop(self, proc: subprocess.Popen[bytes]) -> None:
        # SIGINT is PostgreSQL's "fast" shutdown: disconnect clients, checkpoint,
        # exit. SIGTERM ("smart") would wait for every pooled client to leave.
        proc.send_signal(signal.SIGINT)

    def _is_ready(self) -> bool:
        try:
            lines = (self.directory / "data" / "postmaster.pid").read_text().splitlines()
        except OSError:
            return False
        # The file of a killed server says "ready" until the new one rewrites it.
        ours = bool(lines) and self._proc is not None and lines[0].strip() == str(self._proc.pid)
        return ours and len(lines) >= 8 and lines[7].strip() == "ready" and _port_open(self.port)

    def _after_first_start(self) -> None:
        self.create_database(self.database)


class RedisServer(_Service):
    """A throwaway Redis without persistence."""

    name = "redis"

    def __init__(self) -> None:
        super().__init__()
        binary = os.environ.get("REALTIME_REDIS_SERVER") or shutil.which("redis-server")
        if binary is None:
            raise ServiceError(f"redis-server not found on PATH; {_INSTALL_HINT}")
        self._binary = binary

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _command(self) -> list[str]:
        return [
            self._binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.directory),
            "--daemonize",
            "no",
        ]

    def _is_ready(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False


def _redis_call(port: int, *args: str, timeout: float = 2.0) -> str:
    """Send one command to the Redis on 127.0.0.1:``port`` and return its reply as text.

    Enough RESP for administration: simple strings, integers and bulk strings. An
    error reply raises ``ServiceError``; a connection problem raises ``OSError``.
    """
    request = f"*{len(args)}\r\n".encode()
    for arg in args:
        data = arg.encode()
        request += b"$%d\r\n%s\r\n" % (len(data), data)
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        with sock.makefile("rb") as reply:
            line = reply.readline()
            kind, rest = line[:1], line[1:].rstrip(b"\r\n")
            if kind in (b"+", b":"):
                return rest.decode()
            if kind == b"$":
                size = int(rest)
                return "" if size < 0 else reply.read(size + 2)[:size].decode()
            if kind == b"-":
                raise ServiceError(f"redis {' '.join(args)}: {rest.decode(errors='replace')}")
            raise OSError(f"unexpected reply from redis on port {port}: {line!r}")


def _find_redis_tool(tool: str, env: str) -> str:
    binary = os.environ.get(env) or shutil.which(tool)
    if binary is None:
        raise ServiceError(f"{tool} not found on PATH; {_INSTALL_HINT}")
    return binary


class RedisClusterNode(RedisServer):
    """One node of a ``RedisClusterServer``: a ``RedisServer`` in cluster mode.

    Its ``nodes.conf`` (the node's identity, epoch and slots) and its two ports, the
    client port and the cluster bus port, stay the same across ``stop()``/``kill()``
    and ``start()``, so a restarted node rejoins its cluster as itself. Its data does
    not survive: no RDB, no AOF.
    """

    name = "redis-node"

    def __init__(self, *, node_timeout_ms: int = 2000) -> None:
        super().__init__()
        self.node_timeout_ms = node_timeout_ms
        self._cluster_port = 0

    @property
    def cluster_port(self) -> int:
        """The cluster bus port (set explicitly: port + 10000 may not be free, or exist)."""
        if not self._cluster_port:
            raise ServiceError(f"{self.name} was never started")
        return self._cluster_port

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    @property
    def nodes_conf(self) -> Path:
        return self.directory / "nodes.conf"

    def call(self, *args: str) -> str:
        """One command to this node alone (no redirects followed)."""
        return _redis_call(self.port, *args)

    def cluster_info(self) -> dict[str, str]:
        """``CLUSTER INFO`` as a dict (``cluster_state``, ``cluster_known_nodes``, …)."""
        info = {}
        for line in self.call("CLUSTER", "INFO").splitlines():
            key, sep, value = line.partition(":")
            if sep:
                info[key] = value.strip()
        return info

    def cluster_state(self) -> str | None:
        """``ok`` or ``fail`` as this node sees the cluster; None when it does not answer."""
        try:
            return self.cluster_info().get("cluster_state")
        except (OSError, ServiceError):
            return None

    def _choose_ports(self) -> None:
        super()._choose_ports()
        cluster_port = free_port()
        while cluster_port == self._port:
            cluster_port = free_port()
        self._cluster_port = cluster_port

    def _command(self) -> list[str]:
        return [
            *super()._command(),
            "--cluster-enabled",
            "yes",
            # In the node's own directory, which lives until close(): a restart
            # reads it back and rejoins with the same id and slots.
            "--cluster-config-file",
            str(self.nodes_conf),
            "--cluster-port",
            str(self.cluster_port),
            # Short, so that tests of failures are fast: a node silent this long is
            # suspected, and failed once the majority of masters agree.
            "--cluster-node-timeout",
            str(self.node_timeout_ms),
        ]


class RedisClusterServer(_Managed):
    """A throwaway Redis Cluster on loopback: ``size`` masters, no replicas.

    ``start()`` starts every node and, the first time, joins them with
    ``redis-cli --cluster create``; it returns when every node reports
    ``cluster_state:ok``. ``node(i)`` is each node's own service object, so a test
    can ``kill()``, ``stop()`` or ``start()`` one of them (then ``wait_ok()``, or
    ``start()`` the cluster, which starts whatever node is down and waits).

    With no replicas and the default ``cluster-require-full-coverage yes``, one dead
    node takes the whole cluster to ``cluster_state:fail`` once the others agree it
    is down (about two node timeouts); restarted, it rejoins and the state returns
    to ``ok`` within seconds, but the keys it held are gone.
    """

    name = "redis-cluster"
    ok_timeout = 30.0

    def __init__(self, size: int = 3, *, node_timeout_ms: int = 2000) -> None:
        if size < 3:
            raise ValueError("a Redis Cluster needs at least 3 masters")
        self._cli = _find_redis_tool("redis-cli", "REALTIME_REDIS_CLI")
        self._nodes = [RedisClusterNode(node_timeout_ms=node_timeout_ms) for _ in range(size)]
        self._created = False

    # Addresses -----------------------------------------------------------------------

    @property
    def url(self) -> str:
        """What ``broker.url`` takes: ``redis+cluster://`` and one node to start from."""
        return f"redis+cluster://127.0.0.1:{self.ports[0]}"

    @property
    def startup_url(self) -> str:
        """The same first node as a plain URL, for ``RedisCluster.from_url``."""
        return self._nodes[0].url

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self._nodes]

    @property
    def ports(self) -> list[int]:
        return [node.port for node in self._nodes]

    @property
    def port(self) -> int:
        return self.ports[0]

    @property
    def nodes(self) -> list[RedisClusterNode]:
        return list(self._nodes)

    def node(self, index: int) -> RedisClusterNode:
        return self._nodes[index]

    @property
    def running(self) -> bool:
        return all(node.running for node in self._nodes)

    # Lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        """Start every node that is not running and wait until the cluster is ok."""
        for node in self._nodes:
            node.start()
        if not self._created:
            self._create()
            self._created = True
        self.wait_ok()

    def stop(self) -> None:
        """Stop every node (each is tried; the first failure is raised)."""
        self._each(lambda node: node.stop())

    def kill(self) -> None:
        """SIGKILL every node."""
        self._each(lambda node: node.kill())

    def close(self) -> None:
        """Stop every node and delete its directory; a later ``start()`` builds a new cluster."""
        self._each(lambda node: node.close())
        self._created = False

    # State ---------------------------------------------------------------------------

    def states(self) -> list[str | None]:
        """Each node's ``cluster_state`` (None for a node that does not answer)."""
        return [node.cluster_state() for node in self._nodes]

    def wait_ok(self, timeout: float | None = None) -> None:
        """Wait until every node runs and reports ``cluster_state:ok``."""
        for node in self._nodes:
            if not node.running:
                raise ServiceError(f"{self.name}: a node is not running (port {node.port})")
        self.wait_state("ok", timeout=timeout)

    def wait_state(
        self, state: str, *, nodes: Sequence[int] | None = None, timeout: float | None = None
    ) -> None:
        """Wait until the given nodes (default: all) report ``cluster_state:<state>``."""
        chosen = [self._nodes[i] for i in (range(len(self._nodes)) if nodes is None else nodes)]
        limit = self.ok_timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        while True:
            states = [node.cluster_state() for node in chosen]
            if all(s == state for s in states):
                return
            if time.monotonic() >= deadline:
                raise ServiceError(
                    f"{self.name}: cluster_state is {states}, not {state!r}, after {limit}s\n"
                    + self.log_tail()
                )
            time.sleep(0.1)

    def cli(self, *args: str, node: int = 0, timeout: float = 10.0) -> str:
        """``redis-cli -c`` against one node (redirects followed); its output, stripped."""
        command = [self._cli, "-c", "-h", "127.0.0.1", "-p", str(self.ports[node]), *args]
        try:
            result = subprocess.run(
                command,
                capture_output=True,
                timeout=timeout,
                check=False,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired as exc:
            raise ServiceError(f"redis-cli {' '.join(args)} took over {timeout}s") from exc
        output = result.stdout.decode(errors="replace").strip()
        # redis-cli exits 0 on an error reply; only its text tells.
        if result.returncode != 0 or output.startswith(("ERR", "(error)")):
            raise ServiceError(
                f"redis-cli {' '.join(args)} failed ({result.returncode}):\n"
                + output
                + result.stderr.decode(errors="replace")
            )
        return output

    def log_tail(self, size: int = 1500) -> str:
        return "\n".join(
            f"--- node {i} (port {node._port}):\n{node.log_tail(size)}"
            for i, node in enumerate(self._nodes)
        )

    # Internals -----------------------------------------------------------------------

    def _create(self) -> None:
        addresses = [f"127.0.0.1:{port}" for port in self.ports]
        command = [self._cli, "--cluster", "create", *addresses]
        command += ["--cluster-replicas", "0", "--cluster-yes"]
        try:
            _run(command, timeout=60, what="redis-cli --cluster create")
        except ServiceError as exc:
            raise ServiceError(f"{exc}\n{self.log_tail()}") from None

    def _each(self, action: Callable[[RedisClusterNode], None]) -> None:
        errors: list[BaseException] = []
        for node in self._nodes:
            try:
                action(node)
            except BaseException as exc:
                errors.append(exc)
        if errors:
            raise errors[0]


def _find_nginx() -> str:
    candidates = [os.environ.get("REALTIME_NGINX"), shutil.which("nginx"), "/usr/sbin/nginx"]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise ServiceError(f"nginx not found on PATH or in /usr/sbin; {_INSTALL_HINT}")


def _backend_address(backend: int | str) -> str:
    return f"127.0.0.1:{backend}" if isinstance(backend, int) else backend


class NginxServer(_Service):
    """nginx as the deployments run it, in front of ``backends``, on a free port.

    The configuration is ``deploy/nginx.conf``, the template operators deploy,
    rendered with this server's listen address and backends: what is tested is what
    ships. A backend is a port on 127.0.0.1 or a ``host:port``. ``set_backends()``
    rewrites the configuration and reloads a running nginx (SIGHUP), as an operator
    adding or removing an instance would; connections already open stay where they
    are. The log (``log_tail()``) has nginx's error log and its access log, which
    names the backend (``upstream=``) that served each request.
    """

    name = "nginx"
    start_timeout = 15.0
    stop_timeout = 15.0
    reload_timeout = 15.0

    def __init__(self, backends: Sequence[int | str], *, template: Path | None = None) -> None:
        super().__init__()
        self._binary = _find_nginx()
        self._template = template or NGINX_TEMPLATE
        self._backends = self._check_backends(backends)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    @property
    def backends(self) -> list[str]:
        return list(self._backends)

    @property
    def config_path(self) -> Path:
        return self.directory / "nginx.conf"

    def set_backends(self, backends: Sequence[int | str]) -> None:
        """Replace the backend list: rewrite the configuration, and reload if running.

        A list nginx refuses raises, and leaves the previous list and file in place.
        """
        previous = self._backends
        self._backends = self._check_backends(backends)
        try:
            if self._dir is not None:
                self._write_config()
            if self.running:
                self.reload()
        except BaseException:
            self._backends = previous
            if self._dir is not None:
                self._write_config()
            raise

    def reload(self) -> None:
        """Re-read the configuration (SIGHUP) and wait until new workers took over.

        The configuration is checked first (``nginx -t``): a bad one raises here,
        instead of nginx logging it and carrying on with the old one.
        """
        proc = self._proc
        if proc is None or proc.poll() is not None:
            raise ServiceError(f"{self.name} is not running")
        _run([*self._nginx_args(), "-t", "-q"], timeout=30, what="nginx -t")
        old = set(self.worker_pids())
        proc.send_signal(signal.SIGHUP)
        # The master starts new workers, then tells the old ones to stop accepting
        # (they finish the connections they have: "worker process is shutting down").
        deadline = time.monotonic() + self.reload_timeout
        while time.monotonic() < deadline:
            workers = self.worker_pids()
            new = [pid for pid in workers if pid not in old]
            lingering = [pid for pid in workers if pid in old and not _shutting_down(pid)]
            if new and not lingering:
                return
            if proc.poll() is not None:
                break
            time.sleep(0.02)
        raise ServiceError(f"{self.name} did not reload within the time:\n{self.log_tail()}")

    def worker_pids(self) -> list[int]:
        proc = self._proc
        return [] if proc is None else _child_pids(proc.pid)

    @staticmethod
    def _check_backends(backends: Sequence[int | str]) -> list[str]:
        addresses = [_backend_address(b) for b in backends]
        if not addresses:
            raise ValueError("nginx needs at least one backend")
        return addresses

    def _write_config(self) -> None:
        text = render_nginx_conf(
            f"127.0.0.1:{self.port}", self._backends, self._template.read_text()
        )
        scratch = self.directory / "nginx.conf.new"
        scratch.write_text(text)
        scratch.replace(self.config_path)

    def _nginx_args(self) -> list[str]:
        directory = self.directory
        return [
            self._binary,
            "-p",
            f"{directory}/",
            "-c",
            str(self.config_path),
            # In the foreground, as our child (so that we can signal and reap it),
            # with its pid file here rather than in /run.
            "-g",
            f"daemon off; pid {directory / 'nginx.pid'};",
        ]

    def _command(self) -> list[str]:
        return self._nginx_args()

    def _spawn(self) -> None:
        # The port may have changed since the last start (a fresh server retries on
        # another port when its first one was taken).
        self._write_config()
        super()._spawn()

    def _is_ready(self) -> bool:
        return bool(self.worker_pids()) and _port_open(self.port)


# The ``make_nginx`` fixture: backends (ports on 127.0.0.1 or host:port) -> started nginx.
MakeNginx = Callable[[Sequence[int | str]], NginxServer]


def _shutting_down(pid: int) -> bool:
    """Whether an nginx worker was told to stop (or is already gone)."""
    try:
        title = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True
    return b"shutting down" in title
