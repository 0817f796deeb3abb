"""Reading the pinned requirements files and pyproject.toml's requirement lists."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]


def pyproject() -> dict[str, Any]:
    data: dict[str, Any] = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return data


def own_pins(name: str) -> list[Requirement]:
    """The requirements a requirements file lists itself (its ``-r`` includes left out)."""
    pins = []
    for raw in (ROOT / name).read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            pins.append(Requirement(line))
    return pins


def includes(name: str) -> list[str]:
    """The files a requirements file includes with ``-r``."""
    found = []
    for raw in (ROOT / name).read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if line.startswith("-r"):
            found.append(line.removeprefix("-r").strip())
    return found


def key(requirement: Requirement) -> tuple[str, frozenset[str]]:
    """What a requirement names: the project and its extras, normalized."""
    extras = frozenset(map(canonicalize_name, requirement.extras))
    return canonicalize_name(requirement.name), extras


def pinned_version(requirement: Requirement) -> str:
    (specifier,) = requirement.specifier
    assert specifier.operator == "==", f"{requirement} is not an exact pin"
    return specifier.version
