"""deploy/k8s agrees with Kubernetes, the NATS Helm chart and the services, offline.

Each overlay is rendered (tests/unit/kustomize_render.py; checked against `kubectl kustomize`
where kubectl exists) and every resource validated against the Kubernetes OpenAPI schemas
that kubernetes-validate bundles, strictly (an unknown field fails). The NATS values files are
checked against the chart's own defaults (vendored: tests/fixtures/deploy/). Then our own
rules: real modules and ports, probes on real routes, non-root read-only pods, and settings
that each service accepts in production.
"""

from __future__ import annotations

import base64
import copy
import functools
import importlib
import importlib.util
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml

from services.broker import STREAM_LIMITS, nats_servers
from services.http import JwtVerifier, create_app
from services.http.auth import DEVELOPMENT_JWT_SECRET
from services.runner import SERVICES
from services.runtime import ServiceSpec
from services.settings import SettingsError, load_settings
from tests.unit.kustomize_render import Resource, render
from tests.unit.test_deploy import image_environment, image_uid

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
OVERLAYS = ("laptop", "production")
PORTS = {entry.package: entry.port_default for entry in SERVICES}
# The oldest Kubernetes we claim to support, and the newest the bundled schemas know.
KUBERNETES_VERSIONS = ("1.30", str(kubernetes_validate.latest_version()))
# Each overlay's NATS: the values files given to `helm install`, in order.
NATS_VALUES = {
    "production": ("nats-values.yaml",),
    "laptop": ("nats-values.yaml", "nats-values-laptop.yaml"),
}
NATS_RELEASE, NATS_NAMESPACE = "nats", "billing"
CHART_VALUES = ROOT / "tests" / "fixtures" / "deploy" / "nats-chart-values.yaml"

# What an operator writes in place of secret.example.yaml's placeholders, in the right shape.
KEY_32 = base64.b64encode(bytes(range(32))).decode()
SECRET_VALUES = {
    "CHAIN_KEYS": f"k1={KEY_32}",
    "ANCHOR_SIGNING_KEY": KEY_32,
    "STRIPE_SECRET_KEY": "sk_live_operator",
    "STRIPE_WEBHOOK_SECRETS": "whsec_operator",
    "HUBSPOT_CLIENT_SECRET": "hubspot-client-secret-operator",
    "HUBSPOT_ACCESS_TOKEN": "pat-eu1-operator",
    "SYNC_ENCRYPTION_KEYS": f"k1:{KEY_32}",
    "JWT_SERVICE_SECRET": "service-secret-of-the-operator-32-chars-long",
}
# The supplier lines production/site.yaml leaves commented out for the operator to write.
SITE_VALUES = {
    "SUPPLIER_NAME": "Operator Ltd",
    "SUPPLIER_ADDRESS": "2 Operator Street|Leeds|LS1 1AA",
    "SUPPLIER_COUNTRY": "GB",
    "SUPPLIER_VAT_NUMBER": "GB980780684",
}


def rendered(overlay: str) -> list[Resource]:
    return copy.deepcopy(_rendered(overlay))  # a test may change its copy


@functools.cache
def _rendered(overlay: str) -> list[Resource]:
    return render(K8S / "overlays" / overlay)


def example_secrets() -> list[Resource]:
    return [d for d in yaml.safe_load_all((K8S / "secret.example.yaml").read_text()) if d]


def of_kind(resources: list[Resource], *kinds: str) -> list[Resource]:
    return [r for r in resources if r["kind"] in kinds]


def workloads(resources: list[Resource]) -> list[Resource]:
    return [w for w in of_kind(resources, "Deployment", "StatefulSet")
            if w["spec"]["template"]["spec"]["containers"][0].get("command", [None])[0] == "python"]


def container_of(workload: Resource) -> dict[str, Any]:
    containers = workload["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]  # type: ignore[no-any-return]


def module_of(workload: Resource) -> str:
    command = container_of(workload)["command"]
    assert command[:2] == ["python", "-m"]
    return str(command[2])


def all_overlay_workloads() -> Iterator[tuple[str, Resource]]:
    for overlay in OVERLAYS:
        for workload in workloads(rendered(overlay)):
            yield overlay, workload


# --- rendering and schemas ------------------------------------------------------------------

@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_renderer_agrees_with_kubectl_kustomize(overlay: str) -> None:
    output = subprocess.run(["kubectl", "kustomize", str(K8S / "overlays" / overlay)],
                            capture_output=True, text=True, timeout=60, check=True).stdout

    def by_name(resources: list[Resource]) -> dict[tuple[str, str], Resource]:
        return {(r["kind"], r["metadata"]["name"]): r for r in resources}

    assert by_name(rendered(overlay)) == by_name([d for d in yaml.safe_load_all(output) if d])


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_manifest_is_valid_for_kubernetes(version: str) -> None:
    resources = [*rendered("laptop"), *rendered("production"), *example_secrets()]
    # The overlays share most resources: each distinct one once (about 15 ms of CPU each).
    distinct = {json.dumps(r, sort_keys=True): r for r in resources}
    for resource in distinct.values():
        try:
            kubernetes_validate.validate(resource, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{resource['kind']} {resource['metadata']['name']} ({version}): {exc}")


def test_the_schema_check_catches_a_misspelt_field() -> None:
    ledger = of_kind(rendered("production"), "StatefulSet")[0]
    container_of(ledger)["readinesProbe"] = container_of(ledger).pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError, match="readinesProbe"):
        kubernetes_validate.validate(ledger, KUBERNETES_VERSIONS[0], strict=True)


# --- the services ---------------------------------------------------------------------------

def kernel_routes() -> set[str]:
    """The paths every service's app serves (services/runtime.py builds each with create_app)."""
    app = create_app(title="probe", version="0", route_handlers=[], readiness_checks={},
                     auth=JwtVerifier(secret=DEVELOPMENT_JWT_SECRET))
    return {route.path for route in app.routes}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_service_runs_on_its_port_with_probes_on_real_routes(overlay: str) -> None:
    routes = kernel_routes()
    seen = set()
    for workload in workloads(rendered(overlay)):
        module = module_of(workload)
        assert importlib.util.find_spec(module) is not None, module
        container = container_of(workload)
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports == {"http": PORTS[module]}
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
            assert container[probe]["httpGet"]["path"] in routes
            assert container[probe]["httpGet"]["port"] in ports
        annotations = workload["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/path"] in routes
        assert annotations["prometheus.io/port"] == str(PORTS[module])
        seen.add(module)
    assert seen == set(PORTS)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_ledger_is_a_stateful_set_of_partition_processes(overlay: str) -> None:
    resources = rendered(overlay)
    [ledger] = [w for w in workloads(resources) if module_of(w) == "ledger_service"]
    assert ledger["kind"] == "StatefulSet"
    assert ledger["spec"]["replicas"] >= 2
    assert ledger["spec"]["podManagementPolicy"] == "Parallel"
    headless = [s for s in of_kind(resources, "Service")
                if s["metadata"]["name"] == ledger["spec"]["serviceName"]]
    assert headless and headless[0]["spec"]["clusterIP"] == "None"
    env = {e["name"]: e for e in container_of(ledger)["env"]}
    # The pod's stable name (ledger-0, ledger-1) is its identity when it claims partitions.
    assert env["LEDGER_INSTANCE_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    # One partition count for every process: it comes from the shared ConfigMap only.
    assert "LEDGER_PARTITIONS" not in env
    assert int(config_map(resources, "billing-config")["LEDGER_PARTITIONS"]) >= ledger["spec"]["replicas"]


def test_pods_run_as_the_image_user_read_only_without_capabilities() -> None:
    for overlay, workload in all_overlay_workloads():
        pod = workload["spec"]["template"]["spec"]
        security = pod["securityContext"]
        assert security["runAsNonRoot"] is True
        assert security["runAsUser"] == image_uid() == security["runAsGroup"]
        assert security["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod["automountServiceAccountToken"] is False
        container = container_of(workload)["securityContext"]
        assert container == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                             "capabilities": {"drop": ["ALL"]}}, (overlay, workload["metadata"]["name"])


def test_every_path_a_service_writes_is_a_mounted_volume() -> None:
    for _overlay, workload in all_overlay_workloads():
        container = container_of(workload)
        mounts = {m["mountPath"] for m in container.get("volumeMounts", [])}
        assert "/tmp" in mounts
        if module_of(workload) == "ledger_service":
            env = {e["name"]: e.get("value") for e in container["env"]}
            assert env["ANCHOR_DIR"] in mounts
            claims = {t["metadata"]["name"] for t in workload["spec"]["volumeClaimTemplates"]}
            assert {m["name"] for m in container["volumeMounts"]
                    if m["mountPath"] == env["ANCHOR_DIR"]} <= claims
            # The pod's fsGroup makes the claim writable by the image's user.
            assert workload["spec"]["template"]["spec"]["securityContext"]["fsGroup"] == image_uid()


def quantity(text: str) -> float:
    units = {"m": 1e-3, "Ki": 1024, "Mi": 1024**2, "Gi": 1024**3, "Ti": 1024**4, "": 1}
    number, unit = re.fullmatch(r"([0-9.]+)(m|Ki|Mi|Gi|Ti|)", str(text)).groups()  # type: ignore[union-attr]
    return float(number) * units[unit]


def test_every_service_requests_cpu_and_memory_and_has_no_cpu_limit() -> None:
    for _overlay, workload in all_overlay_workloads():
        resources = container_of(workload)["resources"]
        assert set(resources["requests"]) == {"cpu", "memory"}
        # A CPU limit throttles: the ledger's queue of authorizations would wait it out.
        assert set(resources["limits"]) == {"memory"}
        assert quantity(resources["limits"]["memory"]) >= quantity(resources["requests"]["memory"])


def test_production_sizes_the_ledger_from_the_measured_cpu_per_event() -> None:
    [ledger] = of_kind(rendered("production"), "StatefulSet")
    # base/ledger.yaml: 4,000 usage events/s x 103 us + 500 authorizations/s x 510 us
    # + 100 balance reads/s x 640 us (docs/benchmarks.md), rounded up to 50m.
    cores = 4_000 * 103e-6 + 500 * 510e-6 + 100 * 640e-6
    expected_millicores = -(-round(cores * 1000) // 50) * 50
    assert quantity(container_of(ledger)["resources"]["requests"]["cpu"]) == expected_millicores / 1000


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_workload_has_a_service_and_a_disruption_budget_that_select_it(overlay: str) -> None:
    resources = rendered(overlay)
    for workload in workloads(resources):
        labels = workload["spec"]["template"]["metadata"]["labels"]
        assert workload["spec"]["selector"]["matchLabels"].items() <= labels.items()

        def selects(selector: dict[str, str], pod_labels: dict[str, str] = labels) -> bool:
            return selector.items() <= pod_labels.items()

        budgets = [p for p in of_kind(resources, "PodDisruptionBudget")
                   if selects(p["spec"]["selector"]["matchLabels"])]
        # maxUnavailable, never minAvailable: a budget of one replica would block every drain.
        assert len(budgets) == 1, workload["metadata"]["name"]
        assert budgets[0]["spec"].get("maxUnavailable") == 1 and "minAvailable" not in budgets[0]["spec"]
        services = [s for s in of_kind(resources, "Service") if selects(s["spec"]["selector"])]
        assert services, workload["metadata"]["name"]
        for service in services:
            assert [p["targetPort"] for p in service["spec"]["ports"]] == ["http"]


# --- settings -------------------------------------------------------------------------------

def config_map(resources: list[Resource], name: str) -> dict[str, str]:
    [found] = [r for r in of_kind(resources, "ConfigMap") if r["metadata"]["name"] == name]
    return dict(found.get("data", {}))


def secret_data(secret: Resource) -> dict[str, str]:
    data = {k: base64.b64decode(v).decode() for k, v in secret.get("data", {}).items()}
    return {**data, **secret.get("stringData", {})}


def secrets_of(overlay: str) -> dict[str, dict[str, str]]:
    """The Secrets an overlay's pods read: its own, or (production) the example's keys with the
    values an operator would put there."""
    own = {s["metadata"]["name"]: secret_data(s) for s in of_kind(rendered(overlay), "Secret")}
    if own:
        return own
    filled = {}
    for secret in example_secrets():
        values = secret_data(secret)
        assert all(k in SECRET_VALUES for k, v in values.items() if v == "CHANGE_ME"), values
        filled[secret["metadata"]["name"]] = {k: SECRET_VALUES.get(k, v) if v == "CHANGE_ME" else v
                                              for k, v in values.items()}
    return filled


def pod_environment(overlay: str, workload: Resource, secrets: dict[str, dict[str, str]],
                    extra: dict[str, str] | None = None) -> dict[str, str]:
    """What the container's process sees: the image's ENV, then envFrom, then env."""
    resources = rendered(overlay)
    container = container_of(workload)
    env = dict(image_environment())
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(config_map(resources, source["configMapRef"]["name"]))
        else:
            env.update(secrets[source["secretRef"]["name"]])
    env.update(extra or {})
    for entry in container.get("env", []):
        if "value" in entry:
            env[entry["name"]] = entry["value"]
        else:
            assert entry["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
            env[entry["name"]] = f"{workload['metadata']['name']}-0"
    return env


def load(module: str, env: dict[str, str]) -> Any:
    spec = importlib.import_module(f"{module}.main").SPEC
    assert isinstance(spec, ServiceSpec)
    return load_settings(spec.settings_class, service_name=spec.name,
                         http_port_default=spec.http_port_default, environ=env)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_config_map_and_secret_a_pod_reads_exists(overlay: str) -> None:
    resources = rendered(overlay)
    maps = {r["metadata"]["name"] for r in of_kind(resources, "ConfigMap")}
    secrets = set(secrets_of(overlay))
    for workload in workloads(resources):
        for source in container_of(workload)["envFrom"]:
            if "configMapRef" in source:
                assert source["configMapRef"]["name"] in maps
            else:
                assert source["secretRef"]["name"] in secrets


def test_production_starts_every_service_once_the_operator_names_the_supplier() -> None:
    site = (K8S / "overlays" / "production" / "site.yaml").read_text()
    for name in SITE_VALUES:  # the lines site.yaml leaves for the operator to write
        assert re.search(rf"^  # {name}: ", site, re.MULTILINE), name
    secrets = secrets_of("production")
    for workload in workloads(rendered("production")):
        module = module_of(workload)
        settings = load(module, pod_environment("production", workload, secrets, SITE_VALUES))
        assert settings.is_production
        assert settings.nats_stream_replicas == 3


def test_production_invoicing_refuses_to_start_without_the_supplier_vat_number() -> None:
    [invoicing] = [w for w in workloads(rendered("production")) if module_of(w) == "invoicing_service"]
    env = pod_environment("production", invoicing, secrets_of("production"),
                          {k: v for k, v in SITE_VALUES.items() if k != "SUPPLIER_VAT_NUMBER"})
    with pytest.raises(SettingsError, match="SUPPLIER_VAT_NUMBER"):
        load("invoicing_service", env)


def test_every_key_of_the_example_secrets_is_one_its_service_needs_in_production() -> None:
    secrets = secrets_of("production")
    for workload in workloads(rendered("production")):
        [name] = [s["secretRef"]["name"] for s in container_of(workload)["envFrom"] if "secretRef" in s]
        for key in secrets[name]:
            without = {**secrets, name: {k: v for k, v in secrets[name].items() if k != key}}
            env = pod_environment("production", workload, without, SITE_VALUES)
            with pytest.raises(SettingsError):
                load(module_of(workload), env)


def test_the_laptop_starts_every_service_in_development_against_its_own_servers() -> None:
    resources = rendered("laptop")
    services = {s["metadata"]["name"] for s in of_kind(resources, "Service")}
    for workload in workloads(resources):
        settings = load(module_of(workload), pod_environment("laptop", workload, secrets_of("laptop")))
        assert not settings.is_production
        database_host = urlsplit(settings.database_url).hostname
        assert database_host == "postgres.billing.svc" and "postgres" in services


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_invoicing_reaches_the_ledger_through_its_service(overlay: str) -> None:
    resources = rendered(overlay)
    url = urlsplit(config_map(resources, "billing-config")["LEDGER_URL"])
    name, namespace = url.hostname.split(".")[:2]  # type: ignore[union-attr]
    [service] = [s for s in of_kind(resources, "Service") if s["metadata"]["name"] == name]
    assert service["metadata"]["namespace"] == namespace
    assert url.port == PORTS["ledger_service"]
    assert url.port in [p["port"] for p in service["spec"]["ports"]]


# --- NATS from the Helm chart ---------------------------------------------------------------

def merged(*documents: dict[str, Any]) -> dict[str, Any]:
    """Helm's merge of values files: maps merge key by key, anything else is replaced."""
    result: dict[str, Any] = {}
    for document in documents:
        for key, value in document.items():
            if isinstance(value, dict) and isinstance(result.get(key), dict):
                result[key] = merged(result[key], value)
            else:
                result[key] = value
    return result


def nats_values(overlay: str) -> dict[str, Any]:
    return merged(*(yaml.safe_load((K8S / name).read_text()) for name in NATS_VALUES[overlay]))


def unknown_chart_keys(values: dict[str, Any], chart: dict[str, Any], path: str = "") -> list[str]:
    """Keys the chart does not define. Under a key whose default is an empty map (env,
    resources, merge, topologySpreadConstraints, ...) anything goes: the chart passes it on."""
    unknown = []
    for key, value in values.items():
        if key not in chart:
            unknown.append(f"{path}{key}")
        elif isinstance(value, dict) and chart[key]:
            unknown.extend(unknown_chart_keys(value, chart[key], f"{path}{key}."))
    return unknown


def test_the_nats_values_use_only_keys_the_chart_defines() -> None:
    chart = yaml.safe_load(CHART_VALUES.read_text())
    for name in ("nats-values.yaml", "nats-values-laptop.yaml"):
        assert unknown_chart_keys(yaml.safe_load((K8S / name).read_text()), chart) == [], name


def test_the_chart_key_check_catches_a_misspelt_key() -> None:
    chart = yaml.safe_load(CHART_VALUES.read_text())
    values = {"config": {"jetstream": {"filestore": {"pvc": {"size": "1Gi"}}}}}
    assert unknown_chart_keys(values, chart) == ["config.jetstream.filestore"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_services_reach_every_node_of_the_chart_and_replicate_streams_on_three(overlay: str) -> None:
    values = nats_values(overlay)["config"]
    assert values["cluster"]["enabled"] and values["jetstream"]["enabled"]
    nodes = values["cluster"]["replicas"]
    config = config_map(rendered(overlay), "billing-config")
    expected = {f"{NATS_RELEASE}-{i}.{NATS_RELEASE}-headless.{NATS_NAMESPACE}.svc" for i in range(nodes)}
    assert {urlsplit(u).hostname for u in nats_servers(config["NATS_URL"])} == expected
    assert {urlsplit(u).port for u in nats_servers(config["NATS_URL"])} == {4222}
    assert int(config["NATS_STREAM_REPLICAS"]) == nodes == 3


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_nats_node_has_room_for_every_stream(overlay: str) -> None:
    file_store = nats_values(overlay)["config"]["jetstream"]["fileStore"]
    # The chart's JetStream store is its maxSize, which defaults to the volume's size.
    store_bytes = quantity(file_store.get("maxSize") or file_store["pvc"]["size"])
    scale = float(config_map(rendered(overlay), "billing-config")["NATS_STREAM_BYTES_SCALE"])
    reserved = sum(max(1024**2, int(limits.max_bytes * scale)) for limits in STREAM_LIMITS.values())
    assert reserved <= store_bytes, f"{overlay}: {reserved / 1024**3:.1f} GiB of streams"


def test_the_readme_names_the_commands_and_paths_that_exist() -> None:
    readme = (ROOT / "deploy" / "README.md").read_text()
    for overlay in OVERLAYS:
        assert f"kubectl apply -k deploy/k8s/overlays/{overlay}" in readme
    for name in ("nats-values.yaml", "nats-values-laptop.yaml", "secret.example.yaml"):
        assert (K8S / name).exists() and f"deploy/k8s/{name}" in readme
    assert "helm install nats nats/nats" in readme
