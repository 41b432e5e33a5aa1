"""The deploy manifests agree with the code: real modules, the services' ports, real probes."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import yaml

from services.runner import SERVICES

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
PORTS = {entry.package: entry.port_default for entry in SERVICES}


def _documents() -> list[dict]:  # type: ignore[type-arg]
    docs = []
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    return docs


def test_every_service_has_a_deployment_with_its_port_and_probes() -> None:
    deployments = [d for d in _documents() if d["kind"] == "Deployment"]
    seen = set()
    for deployment in deployments:
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        module = container["command"][-1]
        assert importlib.util.find_spec(module) is not None, module
        assert container["ports"][0]["containerPort"] == PORTS[module]
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        seen.add(module)
    assert seen == set(PORTS)


def test_compose_runs_each_service_on_its_port() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    for name, service in compose["services"].items():
        if "command" not in service or service["command"][0] != "python":
            continue
        module = service["command"][-1]
        assert importlib.util.find_spec(module) is not None, name
        assert service["ports"] == [f"{PORTS[module]}:{PORTS[module]}"]
