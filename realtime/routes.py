"""One declaration per REST endpoint drives its aiohttp route, the checks on its
request and its part of the OpenAPI document (``openapi.py``).

A ``Route`` names the method, path, handler, answers and errors. The handler's
signature declares the inputs: after the node, each parameter is annotated
``InPath[T]``, ``InQuery[T]`` or ``InBody[T]``, with ``T`` from ``rest_types``; a
parameter's default makes it optional. The handler is called with the inputs read
and checked, and returns the answer's body (an ``Outgoing``, a dict, or None for no
content) or a whole response.
"""

from __future__ import annotations

import enum
import inspect
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from functools import cache
from typing import Annotated, Any, TypeVar, get_args, get_origin, get_type_hints

import orjson
from aiohttp import web

from protocol import CommandError, ErrorCode, jsonvalue
from protocol.outgoing import Embed, Outgoing

from .app_keys import NODE
from .schema import ObjectSpec, Spec, spec_of

T = TypeVar("T")


class Where(enum.Enum):
    PATH = "path"
    QUERY = "query"
    BODY = "body"


InPath = Annotated[T, Where.PATH]
InQuery = Annotated[T, Where.QUERY]
InBody = Annotated[T, Where.BODY]

Result = Outgoing | Mapping[str, Any] | web.StreamResponse | None
Handler = Callable[..., Awaitable[Result]]


@dataclass(frozen=True, slots=True)
class Reply:
    """A documented answer that is not an error."""

    status: int
    description: str
    body: type | None = None
    """A TypedDict from ``rest_types``; None: no body, or one that is not JSON."""
    media: str = "application/json"


@dataclass(frozen=True, slots=True)
class Param:
    """One input of a handler."""

    name: str
    where: Where
    spec: Spec
    required: bool
    default: Any = None


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    path: str
    handler: Handler
    summary: str
    replies: tuple[Reply, ...]
    """The first is what the handler's return value is sent with."""
    errors: tuple[ErrorCode, ...] = ()
    service_key: bool = True
    """Needs ``Authorization: Bearer <service key>`` (every /api/v1 path but the document)."""

    def __post_init__(self) -> None:
        in_path = {p.name for p in self.params if p.where is Where.PATH}
        if in_path != set(re.findall(r"\{(\w+)\}", self.path)):
            raise TypeError(f"{self.method} {self.path}: path parameters {sorted(in_path)}")
        if sum(p.where is Where.BODY for p in self.params) > 1:
            raise TypeError(f"{self.method} {self.path}: more than one body")

    @property
    def params(self) -> tuple[Param, ...]:
        return params_of(self.handler)

    @property
    def body(self) -> Param | None:
        return next((p for p in self.params if p.where is Where.BODY), None)


@cache
def params_of(handler: Handler) -> tuple[Param, ...]:
    """The inputs a handler declares (every parameter after the first, the node)."""
    hints = get_type_hints(handler, include_extras=True)
    found = []
    for parameter in list(inspect.signature(handler).parameters.values())[1:]:
        hint = hints[parameter.name]
        wheres = [m for m in get_args(hint)[1:] if isinstance(m, Where)]
        if get_origin(hint) is not Annotated or len(wheres) != 1:
            raise TypeError(f"{handler.__name__}({parameter.name}): InPath, InQuery or InBody")
        has_default = parameter.default is not inspect.Parameter.empty
        found.append(
            Param(
                parameter.name,
                wheres[0],
                spec_of(hint),
                not has_default,
                parameter.default if has_default else None,
            )
        )
    return tuple(found)


# Serving -------------------------------------------------------------------------------


def _embed(text: str) -> object:
    return orjson.Fragment(text)


_EMBED: Embed = _embed


def respond(data: Outgoing | Mapping[str, Any], status: int = 200) -> web.Response:
    wire = data if isinstance(data, Mapping) else data.to_wire(_EMBED)
    return web.Response(body=orjson.dumps(wire), status=status, content_type="application/json")


def _bad(message: str) -> CommandError:
    return CommandError(ErrorCode.BAD_REQUEST, message)


def endpoint(route: Route) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """The aiohttp handler of a route: read and check its inputs, call, answer."""
    params = route.params
    status = route.replies[0].status

    async def handle(request: web.Request) -> web.StreamResponse:
        inputs = {p.name: await _read(request, p) for p in params}
        result = await route.handler(request.app[NODE], **inputs)
        if isinstance(result, web.StreamResponse):
            return result
        if result is None:
            return web.Response(status=status)
        return respond(result, status)

    handle.__name__ = route.handler.__name__
    return handle


async def _read(request: web.Request, param: Param) -> Any:
    spec = param.spec
    if param.where is Where.PATH:
        return spec.read_text(request.match_info[param.name], param.name)
    if param.where is Where.QUERY:
        query = request.query
        if isinstance(spec, ObjectSpec):
            # The first of a repeated parameter, as aiohttp's get() gives.
            names = [f.name for f in spec.fields]
            return spec.read_fields({n: query[n] for n in names if n in query}, text=True)
        text = query.get(param.name)
        if text is None:
            if param.required:
                raise _bad(f"'{param.name}' is required")
            return param.default
        return spec.read_text(text, param.name)
    raw = await request.read()
    if not raw:
        if param.required:
            raise _bad("a JSON object body is required")
        return param.default
    try:
        body = jsonvalue.loads(raw)
    except ValueError as error:
        raise _bad(f"body is not valid JSON: {error}") from None
    return spec.read(body, "body")


def add_routes(app: web.Application, routes: tuple[Route, ...]) -> None:
    for route in routes:
        handler = endpoint(route)
        if route.method == "GET":
            app.router.add_get(route.path, handler)  # and HEAD
        else:
            app.router.add_route(route.method, route.path, handler)
