from __future__ import annotations

import pytest

from services.http import DEVELOPMENT_JWT_SECRET
from services.settings import ServiceSettings, SettingsError, load_settings

BASE = {"DATABASE_URL": "postgresql://u@h:5432/db", "NATS_URL": "nats://h:4222"}


def load(env: dict[str, str]) -> ServiceSettings:
    return load_settings(ServiceSettings, service_name="ledger_service", http_port_default=8001,
                         environ=env)


def test_defaults_are_development_with_the_service_port() -> None:
    settings = load(BASE)
    assert settings.app_env == "development"
    assert settings.http_port == 8001
    assert settings.jwt_secret == DEVELOPMENT_JWT_SECRET


def test_service_prefixed_variable_wins_over_the_plain_one() -> None:
    settings = load({**BASE, "HTTP_PORT": "9000", "LEDGER_HTTP_PORT": "9001"})
    assert settings.http_port == 9001


@pytest.mark.parametrize("missing", ["DATABASE_URL", "NATS_URL"])
def test_missing_required_setting_names_the_variable(missing: str) -> None:
    env = {k: v for k, v in BASE.items() if k != missing}
    with pytest.raises(SettingsError, match=missing):
        load(env)


@pytest.mark.parametrize(
    ("key", "value"), [("HTTP_PORT", "http"), ("HTTP_PORT", "70000"), ("APP_ENV", "staging")]
)
def test_malformed_setting_is_refused(key: str, value: str) -> None:
    with pytest.raises(SettingsError, match=key):
        load({**BASE, key: value})


def test_production_refuses_the_development_jwt_secret() -> None:
    with pytest.raises(SettingsError, match="JWT"):
        load({**BASE, "APP_ENV": "production"})


def test_production_accepts_a_real_secret_or_a_jwks_url() -> None:
    assert load({**BASE, "APP_ENV": "production", "JWT_SECRET": "x" * 40}).is_production
    assert load({**BASE, "APP_ENV": "production", "JWT_JWKS_URL": "https://idp/jwks"}).jwt_jwks_url


def test_error_message_never_contains_the_secret() -> None:
    with pytest.raises(SettingsError) as info:
        load({**BASE, "APP_ENV": "production", "JWT_SECRET": "short-secret-value"})
    assert "short-secret-value" not in str(info.value)
