"""Email subject, plain-text and HTML bodies from ``string.Template`` files.

For a job of type T, each part comes from the first file found of ``T.<ext>`` and
``default.<ext>`` in ``email.templates_dir``, then the same two shipped in
``templates/`` beside this module (``ext``: ``subject``, ``txt``, ``html``).

A template may use the names in ``NAMES`` and ``$data_<field>`` for a top-level
scalar field of the newest notification's data (empty when it has none). Any other
name stops start-up. In the HTML body every value is HTML-escaped; ``items_html``
is built from escaped values.
"""

from __future__ import annotations

import html
import re
import string
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Final

import orjson

from .digest import actors as actors_of
from .digest import line, names, newest_first, summary
from .jobs import Job, JobItem

EXTENSIONS: Final = ("subject", "txt", "html")
NAMES: Final = frozenset(
    {
        "user",
        "type",
        "count",
        "summary",
        "actors",
        "actor",
        "key",
        "time",
        "items_text",
        "items_html",
    }
)
DATA_PREFIX: Final = "data_"
MAX_LISTED = 10
MAX_SUBJECT = 200

_FILE = re.compile(r"([A-Za-z0-9_.:-]+)\.(subject|txt|html)")


class TemplateError(ValueError):
    """A template file cannot be used; the message names it."""


@dataclass(frozen=True, slots=True)
class Rendered:
    subject: str
    text: str
    html: str


def _check(name: str, text: str) -> string.Template:
    template = string.Template(text)
    if not template.is_valid():
        raise TemplateError(f"email template {name}: a '$' that is not $name or $$")
    unknown = sorted(
        n for n in template.get_identifiers() if n not in NAMES and not n.startswith(DATA_PREFIX)
    )
    if unknown:
        raise TemplateError(
            f"email template {name}: unknown names {unknown} "
            f"(known: {sorted(NAMES)} and data_<field>)"
        )
    return template


def _shipped() -> Iterator[tuple[str, str]]:
    for entry in (resources.files(__package__) / "templates").iterdir():
        if _FILE.fullmatch(entry.name):
            yield entry.name, entry.read_text(encoding="utf-8")


def _from_directory(directory: Path) -> Iterator[tuple[str, str]]:
    if not directory.is_dir():
        raise TemplateError(f"email.templates_dir {directory} is not a directory")
    for path in sorted(directory.iterdir()):
        if _FILE.fullmatch(path.name):
            yield path.name, path.read_text(encoding="utf-8")


class _Values(Mapping[str, str]):
    """The names a template sees; absent data fields read as ""."""

    def __init__(self, values: dict[str, str]) -> None:
        self._values = values

    def __getitem__(self, key: str) -> str:
        if key in self._values:
            return self._values[key]
        if key.startswith(DATA_PREFIX):
            return ""
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)


def _when(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M UTC")


def _data_fields(data_json: str) -> dict[str, str]:
    try:
        data = orjson.loads(data_json)
    except orjson.JSONDecodeError:
        return {}
    if not isinstance(data, dict):
        return {}
    fields = {}
    for key, value in data.items():
        if isinstance(value, str | int | float | bool) and key.isidentifier():
            fields[DATA_PREFIX + key] = (
                str(value).lower() if isinstance(value, bool) else str(value)
            )
    return fields


class Templates:
    """Every template, read and checked once (at start-up: it reads files)."""

    def __init__(self, templates_dir: str = "") -> None:
        self._shipped = {name: _check(name, text) for name, text in _shipped()}
        for ext in EXTENSIONS:
            if f"default.{ext}" not in self._shipped:
                raise TemplateError(f"the shipped default.{ext} template is missing")
        self._own: dict[str, string.Template] = {}
        if templates_dir:
            for name, text in _from_directory(Path(templates_dir)):
                self._own[name] = _check(f"{templates_dir}/{name}", text)

    def _template(self, type: str, ext: str) -> string.Template:
        for table in (self._own, self._shipped):
            for name in (f"{type}.{ext}", f"default.{ext}"):
                if name in table:
                    return table[name]
        raise AssertionError("the shipped defaults were checked at start")

    def render(self, job: Job) -> Rendered:
        newest = newest_first(job.items)
        values = self._values(job, newest)
        escaped = {key: html.escape(value) for key, value in values.items()}
        escaped["items_html"] = self._items_html(job, newest)
        subject = self._template(job.type, "subject").substitute(_Values(values))
        subject = " ".join(subject.split())[:MAX_SUBJECT]  # one line: no header injection
        return Rendered(
            subject=subject,
            text=self._template(job.type, "txt").substitute(_Values(values)),
            html=self._template(job.type, "html").substitute(_Values(escaped)),
        )

    @staticmethod
    def _values(job: Job, newest: list[JobItem]) -> dict[str, str]:
        values = _data_fields(newest[0].data_json) if newest else {}
        values |= {
            "user": job.user,
            "type": job.type,
            "count": str(len(job.items)),
            "summary": summary(job),
            "actors": names(actors_of(job.items)),
            "actor": next((i.actor for i in newest if i.actor is not None), ""),
            "key": job.key,
            "time": _when(newest[0].created_at) if newest else "",
            "items_text": _items_text(job, newest),
        }
        return values

    @staticmethod
    def _items_html(job: Job, newest: list[JobItem]) -> str:
        if not job.digest:
            return ""
        rows = [
            f"<li>{html.escape(line(job.type, item))} "
            f'<span style="color: #666">{html.escape(_when(item.created_at))}</span></li>'
            for item in newest[:MAX_LISTED]
        ]
        more = len(newest) - MAX_LISTED
        if more > 0:
            rows.append(f"<li>and {more} more</li>")
        return "<ul>\n" + "\n".join(rows) + "\n</ul>"


def _items_text(job: Job, newest: list[JobItem]) -> str:
    """A digest's rows, newest first, between blank lines; empty for one notification."""
    if not job.digest:
        return ""
    rows = [f"- {line(job.type, item)} ({_when(item.created_at)})" for item in newest[:MAX_LISTED]]
    more = len(newest) - MAX_LISTED
    if more > 0:
        rows.append(f"- and {more} more")
    return "\n" + "\n".join(rows) + "\n"
