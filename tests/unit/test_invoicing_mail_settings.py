"""Mail settings: development logs emails instead of sending them; production refuses to
start without an SMTP server and a sender of its own; the password is never printed."""

from __future__ import annotations

import pytest

from invoicing_service.mail import MailSettings
from invoicing_service.mail.settings import DEVELOPMENT_MAIL_FROM
from services.settings import SettingsError, load_settings

BASE = {"DATABASE_URL": "postgresql://u@h:5432/db", "NATS_URL": "nats://h:4222"}
SMTP = {"SMTP_HOST": "smtp.example.com", "SMTP_USERNAME": "billing",
        "SMTP_PASSWORD": "smtp-password-value", "MAIL_FROM": "billing@relay.example"}
PRODUCTION = {**BASE, **SMTP, "APP_ENV": "production", "JWT_SECRET": "j" * 40}


def load(env: dict[str, str]) -> MailSettings:
    return load_settings(MailSettings, service_name="invoicing_service",
                         http_port_default=8003, environ=env)


def test_development_without_a_host_has_no_smtp_server() -> None:
    settings = load(BASE)
    assert settings.smtp_server is None
    assert settings.mail_from == DEVELOPMENT_MAIL_FROM


def test_the_smtp_server_is_read_from_the_environment() -> None:
    server = load({**BASE, **SMTP, "INVOICING_SMTP_PORT": "465", "SMTP_SECURITY": "tls"}
                  ).smtp_server
    assert server is not None
    assert (server.host, server.port, server.security, server.username) == (
        "smtp.example.com", 465, "tls", "billing")
    assert "smtp-password-value" not in repr(server)


def test_production_starts_with_a_server_and_a_sender() -> None:
    assert load(PRODUCTION).is_production


@pytest.mark.parametrize("missing", ["SMTP_HOST", "MAIL_FROM"])
def test_production_refuses_to_start_without(missing: str) -> None:
    env = {k: v for k, v in PRODUCTION.items() if k != missing}
    with pytest.raises(SettingsError, match=missing) as caught:
        load(env)
    assert "smtp-password-value" not in str(caught.value)


@pytest.mark.parametrize(("changes", "named"), [
    ({"MAIL_FROM": "not an address"}, "MAIL_FROM"),
    ({"EMAIL_LEASE_S": "100", "EMAIL_SEND_TIMEOUT_S": "60"}, "EMAIL_LEASE_S"),
    ({"SMTP_USERNAME": "only-a-user"}, "SMTP_USERNAME"),
    ({"EMAIL_RETRY_INITIAL_S": "600", "EMAIL_RETRY_MAX_S": "60"}, "EMAIL_RETRY_INITIAL_S"),
    ({"SMTP_PORT": "0"}, "SMTP_PORT"),
])
def test_inconsistent_settings_are_refused(changes: dict[str, str], named: str) -> None:
    with pytest.raises(SettingsError, match=named):
        load({**BASE, **changes})
