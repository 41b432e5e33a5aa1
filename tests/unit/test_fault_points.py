"""FAULT_INJECT (services/fault_points.py): a fault point fires only where armed, exits the
process at once with its own exit code, and production refuses to arm one."""

from __future__ import annotations

import subprocess
import sys

import pytest

from services.fault_points import FAULT_EXIT_CODE
from services.http import DEVELOPMENT_JWT_SECRET
from services.settings import ServiceSettings, SettingsError, load_settings

BASE = {"DATABASE_URL": "postgresql://u@h:5432/db", "NATS_URL": "nats://h:4222"}
PRODUCTION = {**BASE, "APP_ENV": "production", "JWT_SECRET": "x" * 40}


def load(env: dict[str, str]) -> ServiceSettings:
    return load_settings(ServiceSettings, service_name="payments_service",
                         http_port_default=8002, environ=env)


def test_no_fault_point_is_armed_by_default() -> None:
    assert load(BASE).fault_inject is None


def test_development_accepts_a_known_fault_point() -> None:
    assert load({**BASE, "FAULT_INJECT": "outbox.before_publish"}).fault_inject == \
        "outbox.before_publish"


def test_an_unknown_fault_point_is_refused() -> None:
    with pytest.raises(SettingsError, match="FAULT_INJECT"):
        load({**BASE, "FAULT_INJECT": "somewhere.else"})


def test_production_refuses_fault_injection() -> None:
    assert load(PRODUCTION).jwt_secret != DEVELOPMENT_JWT_SECRET  # production loads at all
    with pytest.raises(SettingsError, match="APP_ENV=production refuses it"):
        load({**PRODUCTION, "FAULT_INJECT": "outbox.before_publish"})


def run_reaching(armed: str | None) -> subprocess.CompletedProcess[str]:
    code = ("from services import fault_points as f\n"
            f"f.arm({armed!r})\n"
            "f.reach('outbox.before_publish')\n"
            "print('passed')\n")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=False)


def test_an_armed_point_exits_the_process_at_once_with_its_code() -> None:
    result = run_reaching("outbox.before_publish")
    assert result.returncode == FAULT_EXIT_CODE
    assert "passed" not in result.stdout


def test_an_unarmed_point_does_nothing() -> None:
    result = run_reaching(None)
    assert (result.returncode, result.stdout.strip()) == (0, "passed")
