"""Payments settings: development runs with documented development secrets (signatures are
still verified); production refuses to start without real ones and never prints them."""

from __future__ import annotations

import pytest

from payments_service.settings import (
    DEVELOPMENT_STRIPE_WEBHOOK_SECRET,
    PaymentsSettings,
)
from services.settings import SettingsError, load_settings

BASE = {"DATABASE_URL": "postgresql://u@h:5432/db", "NATS_URL": "nats://h:4222"}
PRODUCTION = {
    **BASE,
    "APP_ENV": "production",
    "JWT_SECRET": "j" * 40,
    "STRIPE_SECRET_KEY": "sk_live_real_key_value",
    "STRIPE_WEBHOOK_SECRETS": "whsec_real_one",
    "HUBSPOT_CLIENT_SECRET": "hubspot-real-client-secret",
    "HUBSPOT_ACCESS_TOKEN": "pat-real-token",
    "PUBLIC_BASE_URL": "https://portal.example.com",
}


def load(env: dict[str, str]) -> PaymentsSettings:
    return load_settings(PaymentsSettings, service_name="payments_service",
                         http_port_default=8002, environ=env)


def test_development_starts_with_the_development_webhook_secret() -> None:
    settings = load(BASE)
    assert settings.webhook_secrets == (DEVELOPMENT_STRIPE_WEBHOOK_SECRET,)
    assert settings.http_port == 8002


def test_production_starts_with_real_secrets() -> None:
    assert load(PRODUCTION).is_production


@pytest.mark.parametrize(
    "missing",
    ["STRIPE_SECRET_KEY", "STRIPE_WEBHOOK_SECRETS", "HUBSPOT_CLIENT_SECRET",
     "HUBSPOT_ACCESS_TOKEN"],
)
def test_production_refuses_to_start_without_each_secret(missing: str) -> None:
    env = {k: v for k, v in PRODUCTION.items() if k != missing}
    with pytest.raises(SettingsError, match=missing):
        load(env)


def test_production_refuses_the_development_webhook_secret_even_beside_a_real_one() -> None:
    env = {**PRODUCTION,
           "STRIPE_WEBHOOK_SECRETS": f"whsec_real_one,{DEVELOPMENT_STRIPE_WEBHOOK_SECRET}"}
    with pytest.raises(SettingsError, match="STRIPE_WEBHOOK_SECRETS"):
        load(env)


def test_production_errors_never_contain_a_secret_value() -> None:
    env = {**PRODUCTION, "STRIPE_WEBHOOK_SECRETS": "not-a-stripe-secret-value"}
    with pytest.raises(SettingsError) as info:
        load(env)
    secrets = [PRODUCTION[name] for name in ("JWT_SECRET", "STRIPE_SECRET_KEY",
                                              "HUBSPOT_CLIENT_SECRET", "HUBSPOT_ACCESS_TOKEN")]
    assert not [s for s in [*secrets, "not-a-stripe-secret-value"] if s in str(info.value)]


def test_production_needs_https_for_stripe_and_the_portal() -> None:
    with pytest.raises(SettingsError, match="STRIPE_API_BASE"):
        load({**PRODUCTION, "STRIPE_API_BASE": "http://stripe.internal"})


def test_rotation_takes_comma_separated_secrets() -> None:
    settings = load({**BASE, "STRIPE_WEBHOOK_SECRETS": "whsec_new, whsec_old ,"})
    assert settings.webhook_secrets == ("whsec_new", "whsec_old")


@pytest.mark.parametrize(("low", "high"), [("0", "10"), ("100", "10"), ("ten", "100"),
                                           ("1.0000001", "10")])
def test_top_up_limits_must_be_amounts_in_order(low: str, high: str) -> None:
    with pytest.raises(SettingsError, match="TOPUP"):
        load({**BASE, "TOPUP_AMOUNT_MIN": low, "TOPUP_AMOUNT_MAX": high})
