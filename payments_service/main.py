"""Wiring of the payments service: the one place where its parts meet the kernel."""

from __future__ import annotations

from pathlib import Path

from services.runtime import Runtime, ServiceParts, ServiceSpec


def build(runtime: Runtime) -> ServiceParts:
    return ServiceParts()


SPEC = ServiceSpec(
    name="payments_service",
    title="Payments service",
    version="0.1.0",
    schema="payments",
    http_port_default=8002,
    migrations=Path(__file__).parent / "migrations",
    build=build,
)
