"""Every service's OpenAPI document agrees with the service: schemathesis (every check) against
each service started as its own process, as production runs it.

The services come from the stack runner's list and their operations from their own OpenAPI
documents, so a new service or a new route is covered without touching this test. A small
example count per operation keeps the whole run near a minute; SCHEMATHESIS_EXAMPLES and
SCHEMATHESIS_SEED make it longer or another draw (the default seed keeps CI repeatable).
Every check runs (schemathesis.toml turns them all on: the config-file form of `--checks all`,
which on the command line would override the per-operation exclusions); the exclusions live
there too, each with its reason. Providers are the local fakes (tests/fakes), so a checkout
reaches a Stripe that answers."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pytest

from services.http import DEVELOPMENT_JWT_SECRET, mint_token
from services.runner import SERVICES
from tests.conftest import Infra
from tests.fakes.stripe import SECRET_KEY, FakeStripe
from tests.integration.service_process import ServiceProcess

pytestmark = pytest.mark.integration
CONFIG = Path(__file__).with_name("schemathesis.toml")
EXAMPLES = os.environ.get("SCHEMATHESIS_EXAMPLES", "4")
SEED = os.environ.get("SCHEMATHESIS_SEED", "20261204")
RUN_TIMEOUT_S = 240
OPERATOR_TOKEN = mint_token(DEVELOPMENT_JWT_SECRET, sub="schemathesis", scopes=["operator"])
PORTAL_TOKEN = mint_token(DEVELOPMENT_JWT_SECRET, sub="schemathesis-portal", scopes=["portal"],
                          tenant_id=str(uuid.UUID(int=1)))
PORTAL_ONLY_READS = ["--include-method", "GET", "--max-examples", "2"]


def schemathesis(schema_url: str, token: str, extra: list[str], workdir: Path,
                 ) -> tuple[str, int]:
    # In the test's own directory: schemathesis keeps a cache (.schemathesis/) where it runs.
    result = subprocess.run(
        [sys.executable, "-m", "schemathesis.cli", "--config-file", str(CONFIG), "--no-color",
         "run", schema_url, "--max-examples", EXAMPLES, "--seed", SEED, "--workers", "1",
         "--request-timeout", "10", "--header", f"Authorization: Bearer {token}", *extra],
        capture_output=True, text=True, timeout=RUN_TIMEOUT_S, check=False, cwd=workdir)
    return result.stdout + result.stderr, result.returncode


@pytest.mark.parametrize("package", [entry.package for entry in SERVICES])
def test_the_service_answers_as_its_openapi_document_says(
    package: str, infra: Infra, tmp_path: Path,
) -> None:
    with FakeStripe() as stripe:
        run_schemathesis(package, infra.service_env(
            STRIPE_API_BASE=stripe.url, STRIPE_SECRET_KEY=SECRET_KEY), tmp_path)


def run_schemathesis(package: str, env: dict[str, str], tmp_path: Path) -> None:
    service = ServiceProcess(package, env).start(tmp_path)
    try:
        service.wait_ready()
        document = httpx.get(f"{service.url}/schema/openapi.json", timeout=10).json()
        if not document.get("paths"):
            pytest.skip(f"{package} documents no operations yet")
        # An operator may call every route; a portal backend reads (its own account only:
        # any other is 404, operator routes 403), so the readers are run with its token too.
        runs: list[tuple[str, list[str]]] = [(OPERATOR_TOKEN, [])]
        if any(op.get("security") for item in document["paths"].values()
               for op in item.values() if isinstance(op, dict)):
            runs.append((PORTAL_TOKEN, PORTAL_ONLY_READS))
        for token, extra in runs:
            output, code = schemathesis(f"{service.url}/schema/openapi.json", token, extra,
                                        tmp_path)
            assert code == 0, f"{package}:\n{output[-15000:]}\n{service.logs()[-3000:]}"
    finally:
        assert service.stop() == 0, service.logs()[-3000:]
