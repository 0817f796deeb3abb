"""Typed definitions as JSON Schema, and the checks that read input by them.

A definition is a dataclass (an input: read and checked by ``read``) or a TypedDict
(an output: only described), with fields typed as ``str``, ``int``, ``bool``,
``list[...]``, ``tuple[..., ...]``, ``dict[str, ...]``, ``Literal[...]``, a ``StrEnum``,
another definition, ``X | None`` or ``JsonText``, narrowed by ``Annotated`` markers
(``Pattern``, ``Length``, ``Range``, ``Items``, ``Doc``, ``Example``). So one
declaration gives the OpenAPI schema and the rules a request is held to, and they
cannot disagree.

An optional field (one with a default, or ``NotRequired``) may be absent or null:
both mean the default, as in WebSocket commands. A dataclass may add ``rules``
across its fields (``OneOf``).
"""

from __future__ import annotations

import dataclasses
import enum
import re
import types
from collections.abc import Callable, Mapping, Sequence
from functools import cache
from typing import (
    Annotated,
    Any,
    Literal,
    NotRequired,
    Required,
    TypeVar,
    Union,
    get_args,
    get_origin,
    get_type_hints,
    is_typeddict,
)

from protocol import CommandError, ErrorCode, jsonvalue

Schema = dict[str, Any]

# A 64-bit bound reads as ">= n" in messages: its digits say nothing to a person.
_HUGE = 2**53


# Markers -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Pattern:
    """The whole string matches ``regex`` (a Python and ECMAScript regex, unanchored)."""

    regex: str
    label: str
    """What an error calls such a string: "a user id"."""


@dataclasses.dataclass(frozen=True, slots=True)
class Length:
    minimum: int = 0
    maximum: int | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class Range:
    minimum: int | None = None
    maximum: int | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class Items:
    minimum: int = 0
    maximum: int | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class Doc:
    text: str


@dataclasses.dataclass(frozen=True, slots=True)
class Choices:
    """A ``str`` that is one of ``values`` (a set too long to list in an error)."""

    values: tuple[str, ...]
    label: str
    """What an error calls such a string: "an IANA time zone name"."""


@dataclasses.dataclass(frozen=True, slots=True)
class Example:
    """A value to show (and for a fuzzer to start from)."""

    value: object


class _AnyJson:
    """Marks a ``str`` field whose wire value is any JSON value, held as its text."""

    def __repr__(self) -> str:
        return "ANY_JSON"


ANY_JSON = _AnyJson()
JsonText = Annotated[str, ANY_JSON]
"""Any JSON value, kept exactly: in Python, its JSON text (see ``protocol.jsonvalue``)."""

JSON_DOC = (
    f"Any JSON value, kept exactly: integers from {jsonvalue.MIN_INT} to {jsonvalue.MAX_INT} "
    "(larger ones are refused)."
)


@dataclasses.dataclass(frozen=True, slots=True)
class OneOf:
    """Of these fields, exactly one is given (``exactly=False``: at most one)."""

    fields: tuple[str, ...]
    exactly: bool = True


def _bad(message: str) -> CommandError:
    return CommandError(ErrorCode.BAD_REQUEST, message)


# Specs: one per kind of type -----------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Spec:
    """How one type is described and read."""

    doc: str | None = dataclasses.field(default=None, kw_only=True)
    examples: tuple[object, ...] = dataclasses.field(default=(), kw_only=True)

    @property
    def label(self) -> str:
        """What an error says a value must be: "an integer >= 0"."""
        raise NotImplementedError

    def bare(self, schemas: Components) -> Schema:
        raise NotImplementedError

    def schema(self, schemas: Components) -> Schema:
        described = self.bare(schemas)
        if self.doc is not None:
            described = {**described, "description": self.doc}
        if self.examples:
            described = {**described, "examples": list(self.examples)}
        return described

    def read(self, value: object, name: str) -> Any:
        """The checked value (JSON as decoded) in its Python form."""
        raise NotImplementedError

    def read_text(self, text: str, name: str) -> Any:
        """The checked value of a path segment or query parameter."""
        raise _bad(f"'{name}' cannot be given as text")

    def refuse(self, name: str, value: object) -> CommandError:
        return _bad(f"'{name}' must be {self.label}, got {_show(value)}")


@dataclasses.dataclass(frozen=True)
class StrSpec(Spec):
    pattern: Pattern | None = None
    length: Length = Length()

    @property
    def label(self) -> str:
        if self.pattern is not None:
            return f"{self.pattern.label} matching {self.pattern.regex}"
        low, high = self.length.minimum, self.length.maximum
        if high is None:
            return "a string" if low == 0 else f"a string of at least {low} characters"
        return f"a string of {low} to {high} characters"

    def bare(self, schemas: Components) -> Schema:
        described: Schema = {"type": "string"}
        if self.pattern is not None:
            described["pattern"] = f"^{self.pattern.regex}$"
        if self.length.minimum:
            described["minLength"] = self.length.minimum
        if self.length.maximum is not None:
            described["maxLength"] = self.length.maximum
        return described

    def read(self, value: object, name: str) -> str:
        if not isinstance(value, str) or not self._fits(value):
            raise self.refuse(name, value)
        return value

    def read_text(self, text: str, name: str) -> str:
        return self.read(text, name)

    def _fits(self, value: str) -> bool:
        high = self.length.maximum
        if len(value) < self.length.minimum or (high is not None and len(value) > high):
            return False
        return self.pattern is None or _compiled(self.pattern.regex).fullmatch(value) is not None


_INTEGER_TEXT = re.compile(r"-?[0-9]{1,30}")


@dataclasses.dataclass(frozen=True)
class IntSpec(Spec):
    range: Range = Range()

    @property
    def label(self) -> str:
        low, high = self.range.minimum, self.range.maximum
        if low is not None and (high is None or high >= _HUGE):
            return f"an integer >= {low}"
        if low is not None and high is not None:
            return f"an integer from {low} to {high}"
        return "an integer"

    def bare(self, schemas: Components) -> Schema:
        described: Schema = {"type": "integer"}
        if self.range.minimum is not None:
            described["minimum"] = self.range.minimum
        if self.range.maximum is not None:
            described["maximum"] = self.range.maximum
        return described

    def read(self, value: object, name: str) -> int:
        # JSON Schema counts 5.0 as an integer, so the document promises it is taken.
        if type(value) is float and value.is_integer():
            value = int(value)
        if type(value) is not int or not self._fits(value):
            raise self.refuse(name, value)
        return value

    def read_text(self, text: str, name: str) -> int:
        # Only plain decimal digits: int() would also take "1_000", " 7" and "٣".
        if _INTEGER_TEXT.fullmatch(text) is None:
            raise self.refuse(name, text)
        return self.read(int(text), name)

    def _fits(self, value: int) -> bool:
        low, high = self.range.minimum, self.range.maximum
        return (low is None or value >= low) and (high is None or value <= high)


_TRUE = frozenset({"1", "true", "yes"})
_FALSE = frozenset({"0", "false", "no"})


@dataclasses.dataclass(frozen=True)
class BoolSpec(Spec):
    @property
    def label(self) -> str:
        return "true or false"

    def bare(self, schemas: Components) -> Schema:
        return {"type": "boolean"}

    def read(self, value: object, name: str) -> bool:
        if not isinstance(value, bool):
            raise self.refuse(name, value)
        return value

    def read_text(self, text: str, name: str) -> bool:
        lowered = text.lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        raise self.refuse(name, text)


@dataclasses.dataclass(frozen=True)
class JsonSpec(Spec):
    @property
    def label(self) -> str:
        return "a JSON value"

    def bare(self, schemas: Components) -> Schema:
        return schemas.define("JsonValue", JsonSpec, _json_value)

    def read(self, value: object, name: str) -> str:
        try:
            return jsonvalue.dumps(value)
        except ValueError as error:
            raise _bad(f"'{name}' must be a JSON value: {error}") from None


def _json_value(schemas: Components) -> Schema:
    # JSON Schema cannot tell 1e30 (a float, taken) from an integer literal beyond 64
    # bits (refused): the range is on every number without a fraction.
    itself = {"$ref": "#/components/schemas/JsonValue"}
    return {
        "description": JSON_DOC,
        "anyOf": [
            {"type": ["null", "boolean", "string"]},
            {"type": "number", "not": {"type": "integer"}},
            {"type": "integer", "minimum": jsonvalue.MIN_INT, "maximum": jsonvalue.MAX_INT},
            {"type": "array", "items": itself},
            {"type": "object", "additionalProperties": itself},
        ],
    }


@dataclasses.dataclass(frozen=True)
class ChoiceSpec(Spec):
    values: tuple[str | int | bool, ...] = ()
    named: str | None = None
    """The label, for a list too long to spell out."""

    @property
    def label(self) -> str:
        if self.named is not None:
            return self.named
        return "one of " + ", ".join(map(repr, self.values))

    def bare(self, schemas: Components) -> Schema:
        kinds = {type(value) for value in self.values}
        described: Schema = {"enum": list(self.values)}
        if kinds == {str}:
            described = {"type": "string", **described}
        return described

    def read(self, value: object, name: str) -> object:
        for candidate in self.values:
            if type(candidate) is type(value) and candidate == value:
                return candidate
        raise self.refuse(name, value)

    def read_text(self, text: str, name: str) -> object:
        return self.read(text, name)


@dataclasses.dataclass(frozen=True)
class ListSpec(Spec):
    item: Spec = dataclasses.field(default_factory=JsonSpec)
    items: Items = Items()

    @property
    def label(self) -> str:
        low, high = self.items.minimum, self.items.maximum
        if high is None:
            count = "any number" if low == 0 else f"at least {low}"
        else:
            count = f"at most {high}" if low == 0 else f"{low} to {high}"
        return f"a list of {count} ({self.item.label})"

    def bare(self, schemas: Components) -> Schema:
        described: Schema = {"type": "array", "items": self.item.schema(schemas)}
        if self.items.minimum:
            described["minItems"] = self.items.minimum
        if self.items.maximum is not None:
            described["maxItems"] = self.items.maximum
        return described

    def read(self, value: object, name: str) -> tuple[Any, ...]:
        high = self.items.maximum
        if (
            not isinstance(value, list)
            or len(value) < self.items.minimum
            or (high is not None and len(value) > high)
        ):
            raise _bad(f"'{name}' must be {self.label}")
        return tuple(self.item.read(item, f"{name}[{i}]") for i, item in enumerate(value))


@dataclasses.dataclass(frozen=True)
class MapSpec(Spec):
    value: Spec = dataclasses.field(default_factory=JsonSpec)
    key: Spec | None = None
    """What the keys must be (a string spec); None: any string."""

    @property
    def label(self) -> str:
        return f"an object of {self.value.label}"

    def bare(self, schemas: Components) -> Schema:
        described: Schema = {"type": "object", "additionalProperties": self.value.schema(schemas)}
        if self.key is not None:
            described["propertyNames"] = self.key.schema(schemas)
        return described

    def read(self, value: object, name: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise _bad(f"'{name}' must be {self.label}")
        if self.key is not None:
            for key in value:
                try:
                    self.key.read(key, name)
                except CommandError:
                    raise _bad(
                        f"'{name}' has the key {_show(key)}: keys must be {self.key.label}"
                    ) from None
        return {key: self.value.read(item, f"{name}.{key}") for key, item in value.items()}


@dataclasses.dataclass(frozen=True)
class NullableSpec(Spec):
    """``X | None``: the value, or null."""

    inner: Spec = dataclasses.field(default_factory=JsonSpec)

    @property
    def label(self) -> str:
        return f"{self.inner.label} or null"

    def bare(self, schemas: Components) -> Schema:
        inner = self.inner.schema(schemas)
        kind = inner.get("type")
        if isinstance(kind, str) and "enum" not in inner:
            return {**inner, "type": [kind, "null"]}
        return {"anyOf": [inner, {"type": "null"}]}

    def read(self, value: object, name: str) -> Any:
        return None if value is None else self.inner.read(value, name)

    def read_text(self, text: str, name: str) -> Any:
        return self.inner.read_text(text, name)


@dataclasses.dataclass(frozen=True, slots=True)
class Field:
    name: str
    spec: Spec
    required: bool
    default: Any = None


@dataclasses.dataclass(frozen=True)
class ObjectSpec(Spec):
    """A dataclass or TypedDict, described once under ``components.schemas``."""

    cls: type = object

    @property
    def label(self) -> str:
        return "a JSON object"

    @property
    def fields(self) -> tuple[Field, ...]:
        return fields_of(self.cls)

    @property
    def rules(self) -> tuple[OneOf, ...]:
        return rules_of(self.cls)

    def bare(self, schemas: Components) -> Schema:
        return schemas.ref(self.cls, self.definition)

    def definition(self, schemas: Components, *, text: bool = False) -> Schema:
        """The schema itself (``bare`` refers to it); ``text``: of query parameters,
        which have no null."""
        described: Schema = {"type": "object"}
        doc = _docstring(self.cls)
        if doc:
            described["description"] = doc
        # An input's optional field may be null (meaning its default): say so.
        nullable = not text and dataclasses.is_dataclass(self.cls)
        described["properties"] = {
            f.name: field_schema(f, schemas, text=text, nullable=nullable) for f in self.fields
        }
        required = [f.name for f in self.fields if f.required]
        if required:
            described["required"] = required
        described.update(_rules_schema(self.fields, self.rules, schemas))
        return described

    def read(self, value: object, name: str) -> Any:
        if not isinstance(value, dict):
            raise _bad(f"{name} must be a JSON object")
        return self.read_fields(value)

    def read_fields(self, data: Mapping[str, object], *, text: bool = False) -> Any:
        """Build the dataclass from ``data``: JSON values, or (``text``) the text of
        query parameters."""
        for rule in self.rules:
            _check_rule(rule, {key for key in rule.fields if data.get(key) is not None})
        values: dict[str, Any] = {}
        for f in self.fields:
            if f.name not in data:
                if f.required:
                    raise _bad(f"'{f.name}' is required")
                values[f.name] = f.default
                continue
            value = data[f.name]
            if value is None and not f.required and not isinstance(f.spec, JsonSpec):
                values[f.name] = f.default  # null is absent, as in WebSocket commands
            elif text:
                values[f.name] = f.spec.read_text(str(value), f.name)
            else:
                values[f.name] = f.spec.read(value, f.name)
        return self.cls(**values)


def field_schema(
    f: Field, schemas: Components, *, text: bool = False, nullable: bool = False
) -> Schema:
    """A field's schema with its default; ``text``: as a query parameter (no null);
    ``nullable``: an optional field takes null too (as ``read_fields`` does)."""
    spec = f.spec
    if nullable and not f.required and not isinstance(spec, NullableSpec | JsonSpec):
        spec = NullableSpec(inner=spec)
    if text and isinstance(spec, NullableSpec):
        spec = dataclasses.replace(
            spec.inner,
            doc=spec.doc or spec.inner.doc,
            examples=spec.examples or spec.inner.examples,
        )
    described = spec.schema(schemas)
    if f.default is not None and not isinstance(spec, (JsonSpec, ObjectSpec)):
        described = {**described, "default": f.default}
    return described


def _rules_schema(fields: Sequence[Field], rules: Sequence[OneOf], schemas: Components) -> Schema:
    """``oneOf`` / ``not`` for the rules: a field counts as given when present and not
    null, so each branch holds it to its non-null schema."""
    by_name = {f.name: f for f in fields}

    def given(name: str) -> Schema:
        spec = by_name[name].spec
        inner = spec.inner if isinstance(spec, NullableSpec) else spec
        return {"required": [name], "properties": {name: inner.schema(schemas)}}

    described: Schema = {}
    exactly = [rule for rule in rules if rule.exactly]
    at_most = [rule for rule in rules if not rule.exactly]
    if len(exactly) > 1:
        raise TypeError("one exact OneOf rule per definition")
    if exactly:
        described["oneOf"] = [given(name) for name in exactly[0].fields]
    if at_most:
        # Any two given at once is what is ruled out.
        pairs = [
            (a, b)
            for rule in at_most
            for i, a in enumerate(rule.fields)
            for b in rule.fields[i + 1 :]
        ]
        both = [_merge(given(a), given(b)) for a, b in pairs]
        described["not"] = both[0] if len(both) == 1 else {"anyOf": both}
    return described


def _merge(first: Schema, second: Schema) -> Schema:
    return {
        "required": first["required"] + second["required"],
        "properties": {**first["properties"], **second["properties"]},
    }


def _check_rule(rule: OneOf, given: set[str]) -> None:
    names = " or ".join(f"'{name}'" for name in rule.fields)
    if len(given) > 1:
        raise _bad(f"give {names}, not more than one")
    if rule.exactly and not given:
        raise _bad(f"give {names}")


# From types to specs -------------------------------------------------------------------

_NONE = type(None)
_M = TypeVar("_M")


@cache
def spec_of(annotation: Any) -> Spec:
    """The spec of a type annotation (markers it does not know are left for others)."""
    markers: tuple[object, ...] = ()
    if get_origin(annotation) is Annotated:
        annotation, *extra = get_args(annotation)
        markers = tuple(extra)
    spec = _spec_of_bare(annotation, markers)
    docs = [marker.text for marker in markers if isinstance(marker, Doc)]
    if docs:
        spec = dataclasses.replace(spec, doc=docs[-1])
    examples = tuple(marker.value for marker in markers if isinstance(marker, Example))
    return dataclasses.replace(spec, examples=examples) if examples else spec


def _spec_of_bare(annotation: Any, markers: tuple[object, ...]) -> Spec:
    origin = get_origin(annotation)
    args = get_args(annotation)
    if origin in (Union, types.UnionType):
        others = [arg for arg in args if arg is not _NONE]
        if len(others) != 1 or len(args) != 2:
            raise TypeError(f"only X | None unions are described, not {annotation}")
        return NullableSpec(inner=_spec_of_bare(others[0], markers))
    if origin is Annotated:  # inside a union: Annotated[int, Range(0)] | None
        return spec_of(annotation)
    if origin is Literal:
        return ChoiceSpec(values=tuple(args))
    if origin in (list, tuple, Sequence):
        if origin is tuple and (len(args) != 2 or args[1] is not Ellipsis):
            raise TypeError(f"only tuple[X, ...] is described, not {annotation}")
        items = _marker(markers, Items) or Items()
        return ListSpec(item=spec_of(args[0]), items=items)
    if origin is dict:
        if args[0] is str:
            return MapSpec(value=spec_of(args[1]))
        key = spec_of(args[0])
        if not isinstance(key, StrSpec | ChoiceSpec) or not all(
            isinstance(v, str) for v in getattr(key, "values", ())
        ):
            raise TypeError(f"only dict[str, X] (str narrowed) is described, not {annotation}")
        return MapSpec(value=spec_of(args[1]), key=key)
    if annotation is str:
        if ANY_JSON in markers:
            return JsonSpec()
        choices = _marker(markers, Choices)
        if choices is not None:
            return ChoiceSpec(values=choices.values, named=choices.label)
        return StrSpec(
            pattern=_marker(markers, Pattern), length=_marker(markers, Length) or Length()
        )
    if annotation is bool:
        return BoolSpec()
    if annotation is int:
        return IntSpec(range=_marker(markers, Range) or Range())
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return ChoiceSpec(values=tuple(member.value for member in annotation))
    if isinstance(annotation, type) and (
        dataclasses.is_dataclass(annotation) or is_typeddict(annotation)
    ):
        return ObjectSpec(cls=annotation)
    raise TypeError(f"no schema for {annotation!r}")


def _marker(markers: tuple[object, ...], kind: type[_M]) -> _M | None:
    found = [marker for marker in markers if isinstance(marker, kind)]
    return found[-1] if found else None


@cache
def fields_of(cls: type) -> tuple[Field, ...]:
    hints = get_type_hints(cls, include_extras=True)
    if is_typeddict(cls):
        # Not __required_keys__: Python 3.11 misses NotRequired in string annotations.
        total: bool = cls.__total__  # type: ignore[attr-defined]
        return tuple(
            Field(name, spec_of(_strip_required(hint)), _is_required(hint, total))
            for name, hint in hints.items()
        )
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is neither a dataclass nor a TypedDict")
    found = []
    for f in dataclasses.fields(cls):
        has_default = f.default is not dataclasses.MISSING
        if f.default_factory is not dataclasses.MISSING:
            raise TypeError(f"{cls.__name__}.{f.name}: use a plain default")
        found.append(
            Field(
                f.name, spec_of(hints[f.name]), not has_default, f.default if has_default else None
            )
        )
    return tuple(found)


def rules_of(cls: type) -> tuple[OneOf, ...]:
    rules: tuple[OneOf, ...] = getattr(cls, "rules", ())
    return rules


def _is_required(hint: Any, total: bool) -> bool:
    origin = get_origin(hint)
    return origin is Required or (total and origin is not NotRequired)


def _strip_required(hint: Any) -> Any:
    if get_origin(hint) in (NotRequired, Required):
        return get_args(hint)[0]
    return hint


def _docstring(cls: type) -> str | None:
    doc = cls.__doc__
    # A dataclass without a docstring gets its signature as one.
    if not doc or doc.startswith(f"{cls.__name__}("):
        return None
    return " ".join(doc.split())


class Components:
    """The named schemas a document collects as its definitions are described."""

    def __init__(self) -> None:
        self.schemas: dict[str, Schema] = {}
        self._owners: dict[str, type] = {}

    def ref(self, cls: type, definition: Callable[[Components], Schema]) -> Schema:
        return self.define(cls.__name__, cls, definition)

    def define(self, name: str, owner: type, definition: Callable[[Components], Schema]) -> Schema:
        """A reference to the schema ``name``, described by ``definition`` once."""
        known = self._owners.get(name)
        if known is None:
            self._owners[name] = owner
            self.schemas[name] = {}  # taken before describing: a definition may recur
            self.schemas[name] = definition(self)
        elif known is not owner:
            raise TypeError(f"two definitions named {name}: {known!r} and {owner!r}")
        return {"$ref": f"#/components/schemas/{name}"}


@cache
def _compiled(regex: str) -> re.Pattern[str]:
    return re.compile(regex)


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
