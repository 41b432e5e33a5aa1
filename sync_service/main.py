"""Wiring of the sync service: the one place where its parts meet the kernel."""

from __future__ import annotations

from pathlib import Path

from services.runtime import Runtime, ServiceParts, ServiceSpec


def build(runtime: Runtime) -> ServiceParts:
    return ServiceParts()


SPEC = ServiceSpec(
    name="sync_service",
    title="Sync service",
    version="0.1.0",
    schema="sync",
    http_port_default=8004,
    migrations=Path(__file__).parent / "migrations",
    build=build,
)
