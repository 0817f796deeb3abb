"""The OpenAPI 3.1 document of the REST API, built from the route table.

Paths, parameters, bodies, answers and errors all come from the ``Route``
declarations and the types they name, so the document says what the server does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from protocol import ErrorCode

from .errors import STATUS
from .rest_types import Error
from .routes import Param, Route, Where
from .schema import Components, Field, ObjectSpec, Schema, field_schema, spec_of

ERROR_TEXT = {
    ErrorCode.BAD_REQUEST: "Invalid input",
    ErrorCode.UNAUTHORIZED: "Missing or wrong service key",
    ErrorCode.FORBIDDEN: "Refused",
    ErrorCode.NOT_FOUND: "Unknown namespace, or no such notification of the user",
    ErrorCode.TOO_LARGE: "Body above the namespace's or the server's limit",
    ErrorCode.RATE_LIMITED: "Too many requests",
    ErrorCode.UNAVAILABLE: "Storage or broker down; nothing was done",
    ErrorCode.INTERNAL: "Server error",
}

DESCRIPTION = (
    "Publish, notify, manage membership and the follow graph, read history and "
    "presence, and disconnect users. Every call but this document and the health, "
    "readiness and metrics probes needs `Authorization: Bearer <service key>`. "
    "An optional field may be left out or given as null: both mean its default."
)


def openapi_document(routes: Sequence[Route]) -> dict[str, Any]:
    schemas = Components()
    paths: dict[str, dict[str, Any]] = {}
    codes: set[ErrorCode] = set()
    for route in routes:
        errors = _errors(route)
        codes.update(errors)
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route, errors, schemas)
    error_schema = spec_of(Error).schema(schemas)
    return {
        "openapi": "3.1.0",
        "info": {"title": "realtime REST API", "version": "1", "description": DESCRIPTION},
        "security": [{"serviceKey": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {"serviceKey": {"type": "http", "scheme": "bearer"}},
            "responses": {
                _response_name(code): {
                    "description": f"{ERROR_TEXT[code]} (code {code}).",
                    "content": {"application/json": {"schema": error_schema}},
                }
                for code in ErrorCode
                if code in codes
            },
            "schemas": dict(sorted(schemas.schemas.items())),
        },
    }


def _errors(route: Route) -> list[ErrorCode]:
    errors = list(route.errors)
    if route.service_key and ErrorCode.UNAUTHORIZED not in errors:
        errors.append(ErrorCode.UNAUTHORIZED)
    return sorted(errors, key=lambda code: STATUS[code])


def _operation(route: Route, errors: list[ErrorCode], schemas: Components) -> dict[str, Any]:
    operation: dict[str, Any] = {"operationId": route.handler.__name__, "summary": route.summary}
    if not route.service_key:
        operation["security"] = []
    parameters = [
        described
        for p in route.params
        if p.where is not Where.BODY
        for described in _params(p, schemas)
    ]
    if parameters:
        operation["parameters"] = parameters
    body = route.body
    if body is not None:
        operation["requestBody"] = {
            "required": body.required,
            "content": {"application/json": {"schema": body.spec.schema(schemas)}},
        }
    responses: dict[str, Any] = {}
    for reply in route.replies:
        answer: dict[str, Any] = {"description": reply.description}
        if reply.body is not None:
            answer["content"] = {reply.media: {"schema": spec_of(reply.body).schema(schemas)}}
        elif reply.status != 204:
            answer["content"] = {reply.media: {}}
        responses[str(reply.status)] = answer
    for code in errors:
        responses[str(STATUS[code])] = {"$ref": f"#/components/responses/{_response_name(code)}"}
    operation["responses"] = responses
    return operation


def _params(param: Param, schemas: Components) -> list[Schema]:
    spec = param.spec
    where = param.where.value
    if isinstance(spec, ObjectSpec):
        if spec.rules:
            # Rules across parameters need them as one object: form style, exploded,
            # is the same query string (?before=5&limit=10).
            return [
                {
                    "name": param.name,
                    "in": where,
                    "required": False,
                    "style": "form",
                    "explode": True,
                    "schema": spec.definition(schemas, text=True),
                }
            ]
        return [
            _param(f.name, where, f.required, field_schema(f, schemas, text=True))
            for f in spec.fields
        ]
    field = Field(param.name, spec, param.required, param.default)
    return [_param(param.name, where, param.required, field_schema(field, schemas, text=True))]


def _param(name: str, where: str, required: bool, schema: Schema) -> Schema:
    described: Schema = {"name": name, "in": where, "required": required or where == "path"}
    if "description" in schema:
        described["description"] = schema["description"]
        schema = {key: value for key, value in schema.items() if key != "description"}
    described["schema"] = schema
    return described


def _response_name(code: ErrorCode) -> str:
    return "".join(part.title() for part in code.value.split("_"))
