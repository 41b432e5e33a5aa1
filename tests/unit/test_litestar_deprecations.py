"""Each service's app and OpenAPI document build without a deprecation warning: handlers
declare their parameters, bodies and dependencies in the explicit style Litestar 3 keeps."""

from __future__ import annotations

import warnings

import pytest
from litestar._openapi.plugin import OpenAPIPlugin
from litestar.exceptions import LitestarWarning

from invoicing_service.main import SPEC as INVOICING
from ledger_service.main import SPEC as LEDGER
from payments_service.main import SPEC as PAYMENTS
from services.runtime import ServiceSpec, build_app, load
from sync_service.main import SPEC as SYNC

ENV = {"DATABASE_URL": "postgresql://postgres@127.0.0.1:1/none", "NATS_URL": "nats://127.0.0.1:1"}


@pytest.mark.parametrize("spec", [LEDGER, PAYMENTS, INVOICING, SYNC], ids=lambda s: s.name)
def test_app_and_openapi_document_build_without_deprecation_warnings(spec: ServiceSpec) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        app = build_app(spec, load(spec, ENV))
        app.plugins.get(OpenAPIPlugin).provide_openapi_schema()
    deprecated = [f"{w.category.__name__}: {w.message}" for w in caught
                  if issubclass(w.category, DeprecationWarning | LitestarWarning)]
    assert not deprecated, "\n".join(deprecated)
