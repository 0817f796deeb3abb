"""The route table and the typed definitions it is built from (no server)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal, NotRequired, TypedDict

import pytest

from protocol import CommandError
from protocol.commands import MAX_ID
from realtime.node import Node
from realtime.openapi import openapi_document
from realtime.rest import ROUTES
from realtime.rest_types import HistoryQuery, NotifyRequest, PublishRequest, ReadRequest
from realtime.routes import InPath, Reply, Route
from realtime.schema import Choices, Components, JsonText, Length, ObjectSpec, OneOf, spec_of


def read(cls: type, data: dict[str, Any]) -> Any:
    return spec_of(cls).read(data, "body")


def refused(cls: type, data: dict[str, Any]) -> str:
    with pytest.raises(CommandError) as error:
        read(cls, data)
    return error.value.message


def test_null_is_an_absent_optional_field_but_a_value_of_a_required_json_field() -> None:
    assert read(PublishRequest, {"body": None, "user": None}) == PublishRequest("null")
    assert read(PublishRequest, {"body": {"a": [1]}}).body == '{"a":[1]}'
    assert refused(PublishRequest, {"user": "u"}) == "'body' is required"
    assert read(NotifyRequest, {"type": "t", "to": ["a"], "data": None}).data == "null"


def test_a_body_beyond_64_bit_integers_is_refused_with_the_reason() -> None:
    assert "64 bits" in refused(PublishRequest, {"body": 2**64})


def test_exactly_one_and_at_most_one() -> None:
    assert "not more than one" in refused(
        NotifyRequest, {"type": "t", "to": ["a"], "followers_of": "b"}
    )
    assert refused(NotifyRequest, {"type": "t"}) == "give 'to' or 'followers_of'"
    assert read(NotifyRequest, {"type": "t", "to": None, "followers_of": "b"}).followers_of == "b"
    assert refused(ReadRequest, {"ids": []}).startswith("'ids' must be a list of 1 to 1000")
    assert read(ReadRequest, {"ids": [1, 2.0]}).ids == (1, 2)
    query = spec_of(HistoryQuery)
    assert isinstance(query, ObjectSpec)
    with pytest.raises(CommandError, match="not more than one"):
        query.read_fields({"before": "3", "after": "1"}, text=True)
    assert query.read_fields({"before": "3"}, text=True) == HistoryQuery(before=3)


@pytest.mark.parametrize("text", ["", "1_000", " 7", "+5", "٣", "5.0", "0x10", "1" * 40])
def test_query_integers_are_plain_digits(text: str) -> None:
    query = spec_of(HistoryQuery)
    assert isinstance(query, ObjectSpec)
    with pytest.raises(CommandError):
        query.read_fields({"limit": text}, text=True)


def test_integers_keep_their_bounds_and_booleans_are_not_integers() -> None:
    assert read(ReadRequest, {"up_to": MAX_ID}).up_to == MAX_ID
    for bad in (-1, 2**63, True, 1.5, "1"):
        refused(ReadRequest, {"up_to": bad})


class Shown(TypedDict):
    kept: int
    maybe: NotRequired[str]


def test_not_required_is_optional_in_a_typed_dict_with_string_annotations() -> None:
    schemas = Components()
    spec_of(Shown).schema(schemas)
    assert schemas.schemas["Shown"]["required"] == ["kept"]


@dataclass(frozen=True, slots=True)
class Pair:
    a: Annotated[str | None, Length(1, 3)] = None
    b: JsonText = "null"

    rules: ClassVar[tuple[OneOf, ...]] = (OneOf(("a", "b")),)


def test_a_rule_branch_holds_a_field_to_its_non_null_schema() -> None:
    schemas = Components()
    spec_of(Pair).schema(schemas)
    described = schemas.schemas["Pair"]
    assert described["properties"]["a"]["type"] == ["string", "null"]
    assert described["oneOf"][0] == {
        "required": ["a"],
        "properties": {"a": {"type": "string", "minLength": 1, "maxLength": 3}},
    }


@dataclass(frozen=True, slots=True)
class Defaults:
    flag: bool = True
    zone: Annotated[str, Choices(("UTC", "Europe/Paris"), "a zone")] = "UTC"
    required: int = 0


def test_an_optional_field_with_a_default_is_documented_as_read_null_and_all() -> None:
    # Read: null is the default, as in WebSocket commands; so the schema takes null.
    assert read(Defaults, {"flag": None, "zone": None}) == Defaults()
    assert read(Defaults, {"zone": "Europe/Paris"}).zone == "Europe/Paris"
    assert refused(Defaults, {"zone": "Mars"}) == "'zone' must be a zone, got 'Mars'"
    schemas = Components()
    spec_of(Defaults).schema(schemas)
    properties = schemas.schemas["Defaults"]["properties"]
    assert properties["flag"] == {"type": ["boolean", "null"], "default": True}
    assert properties["zone"] == {
        "anyOf": [{"type": "string", "enum": ["UTC", "Europe/Paris"]}, {"type": "null"}],
        "default": "UTC",
    }


@dataclass(frozen=True, slots=True)
class Keyed:
    channels: dict[Literal["in_app", "push"], bool]


def test_map_keys_may_be_narrowed_and_are_checked() -> None:
    assert read(Keyed, {"channels": {"push": False}}).channels == {"push": False}
    assert "keys must be one of 'in_app', 'push'" in refused(Keyed, {"channels": {"sms": True}})
    schemas = Components()
    spec_of(Keyed).schema(schemas)
    assert schemas.schemas["Keyed"]["properties"]["channels"]["propertyNames"] == {
        "type": "string",
        "enum": ["in_app", "push"],
    }


async def _handler(node: Node, room: InPath[str]) -> None:
    return None


def test_a_route_names_the_path_parameters_its_handler_takes() -> None:
    with pytest.raises(TypeError, match="path parameters"):
        Route("GET", "/x/{user}", _handler, "x", (Reply(204, "Done."),))
    Route("GET", "/x/{room}", _handler, "x", (Reply(204, "Done."),))


def test_each_endpoint_is_declared_once_and_documented() -> None:
    pairs = [(route.method, route.path) for route in ROUTES]
    assert len(set(pairs)) == len(pairs)
    names = [route.handler.__name__ for route in ROUTES]
    assert len(set(names)) == len(names)
    document = openapi_document(ROUTES)
    documented = {
        (method.upper(), path) for path, item in document["paths"].items() for method in item
    }
    assert documented == set(pairs)
