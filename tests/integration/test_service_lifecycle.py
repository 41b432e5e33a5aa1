"""Each service, started as its own process on real PostgreSQL and NATS, becomes ready,
serves OpenAPI and metrics, reports an outage of either dependency, recovers, and stops
cleanly on SIGTERM."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from services.database import parse_database_url
from tests.conftest import Infra
from tests.fakes.tcp_proxy import TcpProxy
from tests.integration.service_process import ServiceProcess

pytestmark = pytest.mark.integration

PACKAGES = ["ledger_service", "payments_service", "invoicing_service", "sync_service"]


@pytest.fixture(scope="module")
def log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("service-logs")


@pytest.mark.parametrize("package", PACKAGES)
def test_service_starts_ready_serves_openapi_and_metrics_and_stops_cleanly(
    infra: Infra, log_dir: Path, package: str
) -> None:
    service = ServiceProcess(package, infra.service_env()).start(log_dir)
    try:
        service.wait_ready()
        ready = httpx.get(f"{service.url}/readyz").json()
        assert ready["checks"] == {"database": "ok", "nats": "ok"}

        openapi = httpx.get(f"{service.url}/schema/openapi.json")
        assert openapi.status_code == 200
        assert openapi.json()["openapi"].startswith("3.1")
        assert "BearerToken" in openapi.json()["components"]["securitySchemes"]

        metrics = httpx.get(f"{service.url}/metrics")
        assert metrics.status_code == 200
        assert "text/plain" in metrics.headers["content-type"]
        assert "http_requests_total" in metrics.text
    finally:
        code = service.stop()
    assert code == 0, service.logs()
    assert "service stopped" in service.logs()


def _readiness(service: ServiceProcess) -> tuple[int, dict[str, str]]:
    response = httpx.get(f"{service.url}/readyz", timeout=10)
    return response.status_code, response.json().get("checks", {})


def _eventually(predicate, timeout_s: float = 20) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError("condition not reached in time")


@pytest.fixture
def proxied_service(infra: Infra, log_dir: Path) -> Iterator[tuple[ServiceProcess, TcpProxy, TcpProxy]]:
    db = parse_database_url(infra.database_url)
    nats_host, nats_port = infra.nats_url.removeprefix("nats://").rsplit(":", 1)
    with TcpProxy(target_host=db.host, target_port=db.port) as db_proxy, TcpProxy(
        target_host=nats_host, target_port=int(nats_port)
    ) as nats_proxy:
        database_url = (
            f"postgresql://{db.user}@127.0.0.1:{db_proxy.port}/{db.dbname}"
        )
        env = infra.service_env(
            DATABASE_URL=database_url, NATS_URL=f"nats://127.0.0.1:{nats_proxy.port}"
        )
        service = ServiceProcess("sync_service", env).start(log_dir)
        try:
            service.wait_ready()
            yield service, db_proxy, nats_proxy
        finally:
            service.stop()


def test_readyz_reports_postgres_outage_and_recovers(
    proxied_service: tuple[ServiceProcess, TcpProxy, TcpProxy],
) -> None:
    service, db_proxy, _ = proxied_service
    db_proxy.cut()
    _eventually(lambda: _readiness(service)[0] == 503)
    _status, checks = _readiness(service)
    assert checks["database"] != "ok" and checks["nats"] == "ok"
    db_proxy.restore()
    _eventually(lambda: _readiness(service) == (200, {"database": "ok", "nats": "ok"}))


def test_readyz_reports_nats_outage_and_recovers(
    proxied_service: tuple[ServiceProcess, TcpProxy, TcpProxy],
) -> None:
    service, _, nats_proxy = proxied_service
    nats_proxy.cut()
    _eventually(lambda: _readiness(service)[0] == 503)
    assert _readiness(service)[1]["nats"] != "ok"
    nats_proxy.restore()
    _eventually(lambda: _readiness(service) == (200, {"database": "ok", "nats": "ok"}), 30)


def test_missing_setting_stops_start_with_a_clear_message(infra: Infra, log_dir: Path) -> None:
    env = infra.service_env()
    env.pop("NATS_URL")
    service = ServiceProcess("payments_service", env).start(log_dir)
    assert service.process is not None
    assert service.process.wait(30) == 2
    assert "NATS_URL" in service.logs()
