"""Keeps docs/protocol.md honest: it names every op, push, error code, close code and
REST route the code has, its JSON examples parse and are valid for the protocol, and
it links nothing outside the repository.

The checks read names from the code, so a new op, push or route fails here until the
reference describes it; they do not pin the wording.
"""

from __future__ import annotations

import inspect
import json
import re
from pathlib import Path
from typing import Any, get_args

import pytest
from aiohttp import web

from protocol import CloseCode, ErrorCode, outgoing, parse_command
from protocol.commands import OPS, Rejected
from realtime.rest import add_routes

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "protocol.md"
README = ROOT / "README.md"

_FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)
_LINK = re.compile(r"\]\(([^)\s]+)\)")


def _text() -> str:
    return DOC.read_text(encoding="utf-8")


def _json_blocks() -> list[str]:
    return [body for lang, body in _FENCE.findall(_text()) if lang == "json"]


def _values(block: str) -> list[Any]:
    """A block is one JSON value, or one per line (as frames are shown)."""
    try:
        return [json.loads(block)]
    except json.JSONDecodeError:
        return [json.loads(line) for line in block.splitlines() if line.strip()]


def _examples() -> list[dict[str, Any]]:
    """Every JSON object of the examples, nested ones included."""
    found: list[dict[str, Any]] = []
    pending: list[Any] = [value for block in _json_blocks() for value in _values(block)]
    while pending:
        value = pending.pop()
        if isinstance(value, dict):
            found.append(value)
            pending.extend(value.values())
        elif isinstance(value, list):
            pending.extend(value)
    return found


def _push_names() -> set[str]:
    names = set()
    for push in get_args(outgoing.Push):
        names.update(re.findall(r'"push": "([a-z_.]+)"', inspect.getsource(push)))
    return names


def test_every_json_block_parses() -> None:
    blocks = _json_blocks()
    assert len(blocks) > 20
    for block in blocks:
        try:
            _values(block)
        except json.JSONDecodeError as error:
            pytest.fail(f"a json block does not parse ({error}):\n{block}")


def test_every_op_has_an_example_and_every_example_is_a_valid_command() -> None:
    commands = [e for e in _examples() if "op" in e]
    missing = OPS - {c["op"] for c in commands}
    assert not missing, f"ops without an example: {missing}"
    for example in commands:
        command = parse_command(example)
        assert not isinstance(command, Rejected), (example, command)
    for op in OPS:
        assert f"### {op}\n" in _text(), f"no section for {op}"


def test_every_push_has_an_example_and_no_example_invents_one() -> None:
    names = _push_names()
    assert {"message", "lagged", "joined"} <= names  # the source scan found them
    shown = {e["push"] for e in _examples() if "push" in e}
    assert shown == names


def test_every_error_code_is_described_and_examples_use_real_ones() -> None:
    text = _text()
    for code in ErrorCode:
        assert f"`{code.value}`" in text, code
    used = {e["error"]["code"] for e in _examples() if isinstance(e.get("error"), dict)}
    # "timeout" is the body of an HTTP 408 before the upgrade, not a command error.
    assert used <= {c.value for c in ErrorCode} | {"timeout"}


def test_every_close_code_is_described() -> None:
    text = _text()
    for code in CloseCode:
        assert re.search(rf"^\| {code.value} \|", text, re.MULTILINE), code


def test_every_rest_route_is_in_the_table() -> None:
    app = web.Application()
    add_routes(app)
    routes = {
        (route.method, route.resource.canonical)
        for route in app.router.routes()
        if route.method != "HEAD" and route.resource is not None
    }
    assert len(routes) > 10
    text = _text()
    for method, path in routes:
        assert f"`{method} {path}`" in text, (method, path)


def _slug(heading: str) -> str:
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(text: str) -> set[str]:
    anchors: set[str] = set()
    for heading in re.findall(r"^#+ (.+)$", text, re.MULTILINE):
        slug = base = _slug(heading)
        number = 0
        while slug in anchors:
            number += 1
            slug = f"{base}-{number}"
        anchors.add(slug)
    return anchors


@pytest.mark.parametrize("path", [DOC, README], ids=["protocol.md", "README.md"])
def test_links_stay_inside_the_repository(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    anchors = _anchors(text)
    for target in _LINK.findall(text):
        if target.startswith("#"):
            assert target[1:] in anchors, f"{path.name}: no heading for {target}"
            continue
        if "://" in target:
            # The reference stands alone; the README may point at web pages.
            assert path != DOC, f"protocol.md links a web page: {target}"
            continue
        file = (path.parent / target.partition("#")[0]).resolve()
        assert file.is_relative_to(ROOT), f"{path.name} links outside the repository: {target}"
        assert file.exists(), f"{path.name} links a missing file: {target}"


def test_the_readme_links_the_reference() -> None:
    assert "](docs/protocol.md)" in README.read_text(encoding="utf-8")
