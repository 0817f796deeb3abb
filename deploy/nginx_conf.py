"""Render ``deploy/nginx.conf``, the one nginx template, for a deployment.

The template has two placeholders: the ``listen`` address, and the ``server`` line of
``upstream realtime``, which is repeated once per instance. Everything else in it is
the same wherever it runs: the tests (``tests/services.py``) render it in front of
their own servers, and ``docker-compose.yml`` mounts ``deploy/nginx.compose.conf``,
rendered from it by this module::

    python -m deploy.nginx_conf                  # rewrite deploy/nginx.compose.conf
    python -m deploy.nginx_conf --check          # fail if it is out of date
    python -m deploy.nginx_conf --listen 80 --server 10.0.0.5:8080 --server 10.0.0.6:8080

A test checks that the committed ``nginx.compose.conf`` is what this module renders.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from pathlib import Path

TEMPLATE = Path(__file__).resolve().with_name("nginx.conf")
COMPOSE_CONFIG = TEMPLATE.with_name("nginx.compose.conf")
# docker-compose.yml: nginx listens on port 80 of its container and reaches the
# instances by their service names on the compose network.
COMPOSE_LISTEN = "80"
COMPOSE_SERVERS = ("realtime1:8080", "realtime2:8080", "realtime3:8080")

LISTEN = "@LISTEN@"
SERVER = "@SERVER@"
_PLACEHOLDER = re.compile(r"@[A-Z_]+@")
# host:port, [ipv6]:port or a bare port; nothing that could end a directive.
_ADDRESS = re.compile(r"[A-Za-z0-9_.:\[\]-]+")


class TemplateError(ValueError):
    """The template or the values given for it are not usable."""


def render(listen: str | int, servers: Sequence[str], template: str | None = None) -> str:
    """The template with ``listen`` filled in and one ``server`` line per address."""
    listen = str(listen)
    for value in (listen, *servers):
        if not _ADDRESS.fullmatch(value):
            raise TemplateError(f"not an address nginx can take here: {value!r}")
    if not servers:
        raise TemplateError("at least one upstream server is needed")
    text = TEMPLATE.read_text() if template is None else template

    server_lines = 0
    out: list[str] = []
    for line in text.splitlines(keepends=True):
        if SERVER in line:
            if line.lstrip().startswith("#"):
                raise TemplateError(f"placeholder in a comment: {line.strip()!r}")
            server_lines += 1
            out.extend(line.replace(SERVER, server) for server in servers)
        else:
            out.append(line.replace(LISTEN, listen))
    if server_lines != 1 or LISTEN not in text:
        raise TemplateError(f"the template needs one {SERVER} line and a {LISTEN}")
    rendered = "".join(out)
    if left := _PLACEHOLDER.findall(rendered):
        raise TemplateError(f"unknown placeholders in the template: {sorted(set(left))}")
    return rendered


def compose_config() -> str:
    """What ``deploy/nginx.compose.conf`` must contain."""
    header = (
        "# GENERATED from deploy/nginx.conf by `python -m deploy.nginx_conf`: edit the\n"
        "# template and run that, not this file.\n\n"
    )
    return header + render(COMPOSE_LISTEN, COMPOSE_SERVERS)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m deploy.nginx_conf",
        description="Render deploy/nginx.conf. Without --listen/--server: rewrite "
        "deploy/nginx.compose.conf for docker-compose.yml.",
    )
    parser.add_argument("--listen", help='where nginx listens: "80", "127.0.0.1:8080", ...')
    parser.add_argument(
        "--server",
        action="append",
        default=[],
        metavar="HOST:PORT",
        help="an instance; repeat for each",
    )
    parser.add_argument("-o", "--output", type=Path, help="write here instead of stdout")
    parser.add_argument(
        "--check", action="store_true", help="only check that nginx.compose.conf is current"
    )
    args = parser.parse_args(argv)

    if args.listen is None and not args.server:
        expected = compose_config()
        if args.check:
            current = COMPOSE_CONFIG.read_text() if COMPOSE_CONFIG.exists() else ""
            if current != expected:
                print(f"{COMPOSE_CONFIG} is out of date: run python -m deploy.nginx_conf")
                return 1
            return 0
        COMPOSE_CONFIG.write_text(expected)
        return 0
    if args.listen is None or not args.server or args.check:
        parser.error("--listen and at least one --server go together, without --check")
    try:
        text = render(args.listen, args.server)
    except TemplateError as exc:
        parser.error(str(exc))
    if args.output is None:
        sys.stdout.write(text)
    else:
        args.output.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
