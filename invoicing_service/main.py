"""Wiring of the invoicing service: the one place where its parts meet the kernel."""

from __future__ import annotations

from pathlib import Path

from services.runtime import Runtime, ServiceParts, ServiceSpec


def build(runtime: Runtime) -> ServiceParts:
    return ServiceParts()


SPEC = ServiceSpec(
    name="invoicing_service",
    title="Invoicing service",
    version="0.1.0",
    schema="invoicing",
    http_port_default=8003,
    migrations=Path(__file__).parent / "migrations",
    build=build,
)
