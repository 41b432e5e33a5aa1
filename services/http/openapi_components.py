"""The OpenAPI document's body schemas are msgspec's own.

Litestar derives a schema from each msgspec Struct itself, and loses constraints on the way:
an optional field whose type is itself an annotated alias (`Annotated[PositiveAmount | None,
Meta(description=...)]`) is documented as a bare string, without the pattern the service
enforces, and `forbid_unknown_fields` is not documented at all. Clients and schemathesis then
send what the document allows and the service refuses. msgspec's JSON Schema of the same
Struct is exactly what it validates, so every component Litestar generated for a
Struct a handler takes or answers is replaced by msgspec's, once, when the app is built.

And an operation with a path parameter documents 404: the router itself answers it for a
value that is not one (an account id that is not a UUID), whatever the handler declares.
"""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Litestar
from litestar._openapi.plugin import OpenAPIPlugin

REF_TEMPLATE = "#/components/schemas/{name}"


def handler_structs(app: Litestar) -> list[type[msgspec.Struct]]:
    """The Struct types the app's handlers take or answer (bodies, return types, documented
    responses); msgspec adds the ones they refer to."""
    found: dict[type[msgspec.Struct], None] = {}
    for route in app.routes:
        for handler in getattr(route, "route_handlers", ()):
            signature = handler.parsed_fn_signature
            data = signature.parameters.get("data")
            candidates: list[Any] = [data.annotation if data else None,
                                     signature.return_type.annotation]
            candidates += [spec.data_container
                           for spec in (getattr(handler, "responses", None) or {}).values()]
            for candidate in candidates:
                if isinstance(candidate, type) and issubclass(candidate, msgspec.Struct):
                    found[candidate] = None
    return list(found)


PROBLEM_MEDIA_TYPE = "application/problem+json"
HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")


def complete_openapi_document(app: Litestar) -> None:
    document: dict[str, Any] = app.plugins.get(OpenAPIPlugin).provide_openapi_schema()
    use_msgspec_component_schemas(document, handler_structs(app))
    document_not_found_on_path_parameters(document)


def document_not_found_on_path_parameters(document: dict[str, Any]) -> None:
    problem = ({"$ref": REF_TEMPLATE.format(name="ProblemDocument")}
               if "ProblemDocument" in document.get("components", {}).get("schemas", {})
               else {"type": "object"})
    for path_item in document.get("paths", {}).values():
        for method in HTTP_METHODS:
            operation = path_item.get(method)
            if operation is None:
                continue
            parameters = [*path_item.get("parameters", ()), *operation.get("parameters", ())]
            if not any(p.get("in") == "path" for p in parameters):
                continue
            operation.setdefault("responses", {}).setdefault("404", {
                "description": "Not Found: no such resource, or a path parameter that is not one",
                "content": {PROBLEM_MEDIA_TYPE: {"schema": problem}},
            })


def use_msgspec_component_schemas(document: dict[str, Any],
                                  structs: list[type[msgspec.Struct]]) -> None:
    """Each component Litestar named after one of `structs` (or a Struct they refer to)
    becomes msgspec's schema of it. Two Structs of one name get names of msgspec's own,
    which Litestar's document does not use: those components are left as they are."""
    components = document.setdefault("components", {}).setdefault("schemas", {})
    if not structs:
        return
    _, schemas = msgspec.json.schema_components(structs, ref_template=REF_TEMPLATE)
    for name, schema in schemas.items():
        if name in components:
            components[name] = schema
