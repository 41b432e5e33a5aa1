"""OPTIONS answers with every method of the path in `Allow`, also when two handlers (GET
and PATCH) share one path, which Litestar alone answered with the first one's only."""

from __future__ import annotations

from litestar import Litestar, Router, get, patch
from litestar.params import FromPath
from litestar.testing import TestClient

from services.http import JwtVerifier, create_app


@get("/{thing_id:int}", sync_to_thread=False)
def read(thing_id: FromPath[int]) -> str:
    return "read"


@patch("/{thing_id:int}", sync_to_thread=False)
def change(thing_id: FromPath[int]) -> str:
    return "changed"


def test_allow_names_every_method_of_a_path_with_two_handlers() -> None:
    app: Litestar = create_app(title="t", version="1", route_handlers=[
        Router("/things", route_handlers=[read, change])], readiness_checks={},
        auth=JwtVerifier(secret="x" * 32))
    with TestClient(app) as client:
        response = client.options("/things/1")
    assert response.status_code == 204
    assert response.headers["allow"] == "GET, OPTIONS, PATCH"
