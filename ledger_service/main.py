"""Wiring of the ledger service: the one place where its parts meet the kernel."""

from __future__ import annotations

from pathlib import Path

from services.runtime import Runtime, ServiceParts, ServiceSpec


def build(runtime: Runtime) -> ServiceParts:
    return ServiceParts()


SPEC = ServiceSpec(
    name="ledger_service",
    title="Ledger service",
    version="0.1.0",
    schema="ledger",
    http_port_default=8001,
    migrations=Path(__file__).parent / "migrations",
    build=build,
)
