"""The OpenAPI document's body schemas are msgspec's own.

Litestar derives a schema from each msgspec Struct itself, and loses constraints on the way:
an optional field whose type is itself an annotated alias (`Annotated[PositiveAmount | None,
Meta(description=...)]`) is documented as a bare string, without the pattern the service
enforces, and `forbid_unknown_fields` is not documented at all. Clients and schemathesis then
send what the document allows and the service refuses. msgspec's JSON Schema of the same
Struct is exactly what it validates, so every component Litestar generated for a contract
Struct is replaced by msgspec's (with the components it refers to), once, when the app is
built.

And an operation with a path parameter documents 404: the router itself answers it for a
value that is not one (an account id that is not a UUID), whatever the handler declares.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import msgspec
from litestar import Litestar
from litestar._openapi.plugin import OpenAPIPlugin

REF_TEMPLATE = "#/components/schemas/{name}"
CONTRACT_MODULES = ("contracts.",)


def _structs(cls: type[msgspec.Struct] = msgspec.Struct) -> Iterator[type[msgspec.Struct]]:
    for sub in cls.__subclasses__():
        yield sub
        yield from _structs(sub)


def contract_structs() -> dict[str, type[msgspec.Struct]]:
    """Every loaded contract Struct by its name (the name Litestar gives its component)."""
    found: dict[str, type[msgspec.Struct]] = {}
    for cls in _structs():
        if cls.__module__.startswith(CONTRACT_MODULES) and not getattr(cls, "__parameters__", ()):
            found.setdefault(cls.__name__, cls)
    return found


PROBLEM_MEDIA_TYPE = "application/problem+json"
HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")


def complete_openapi_document(app: Litestar) -> None:
    document: dict[str, Any] = app.plugins.get(OpenAPIPlugin).provide_openapi_schema()
    use_msgspec_component_schemas(document)
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


def use_msgspec_component_schemas(document: dict[str, Any]) -> None:
    components = document.get("components", {}).setdefault("schemas", {})
    structs = contract_structs()
    wanted = [structs[name] for name in components if name in structs]
    if not wanted:
        return
    _, schemas = msgspec.json.schema_components(wanted, ref_template=REF_TEMPLATE)
    for name, schema in schemas.items():
        if name in components or name in {cls.__name__ for cls in wanted}:
            components[name] = schema
        else:
            components.setdefault(name, schema)
