"""pyproject.toml and the pinned requirements files agree.

requirements*.txt are the lock files ``make`` installs; pyproject.toml's lists are what
``pip install .`` (or ``.[dev]``, ``.[bench]``) asks for. Each pin must satisfy the
matching range, and neither side may name a project the other does not.
"""

from __future__ import annotations

import pytest
from packaging.requirements import Requirement

from tests.packaging.pins import includes, key, own_pins, pinned_version, pyproject

PROJECT = pyproject()["project"]
SELF = PROJECT["name"]


def _declared(group: str) -> list[Requirement]:
    if group == "runtime":
        return [Requirement(text) for text in PROJECT["dependencies"]]
    return [Requirement(text) for text in PROJECT["optional-dependencies"][group]]


@pytest.mark.parametrize(
    ("group", "lock_file"),
    [
        ("runtime", "requirements.txt"),
        ("bench", "requirements-bench.txt"),
        ("dev", "requirements-dev.txt"),
    ],
)
def test_every_pin_falls_in_the_declared_range(group: str, lock_file: str) -> None:
    declared = {key(r): r for r in _declared(group) if r.name != SELF}
    pinned = {key(r): r for r in own_pins(lock_file)}
    assert sorted(declared) == sorted(pinned), f"{lock_file} and pyproject [{group}] differ"
    for name, pin in pinned.items():
        version = pinned_version(pin)
        assert declared[name].specifier.contains(version), (
            f"{lock_file} pins {pin}, outside pyproject's {declared[name]}"
        )


def test_the_extras_include_what_the_lock_files_include() -> None:
    # requirements-dev.txt includes the runtime and bench files; the dev extra gets the
    # runtime dependencies anyway and names the bench extra.
    assert includes("requirements-dev.txt") == ["requirements.txt", "requirements-bench.txt"]
    assert f"{SELF}[bench]" in PROJECT["optional-dependencies"]["dev"]
    assert includes("requirements.txt") == []
    assert includes("requirements-bench.txt") == []
