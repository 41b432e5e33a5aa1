"""Settings of the payments service: the kernel's, plus Stripe, HubSpot and top-up limits.

Every secret has a development default so that a fresh checkout runs with no configuration;
webhook signatures are verified with those defaults too, never skipped. With
``APP_ENV=production`` the service refuses to start while any of them is missing or still the
development value.
"""

from __future__ import annotations

from typing import Annotated, Final

import msgspec

from contracts.money import MoneyError, to_micros
from services.settings import ServiceSettings, SettingsError

# Development only, documented in docs/payments.md so that a developer can sign test webhooks.
DEVELOPMENT_STRIPE_SECRET_KEY: Final = "sk_test_dev_only_insecure_payments_key"  # noqa: S105
DEVELOPMENT_STRIPE_WEBHOOK_SECRET: Final = "whsec_dev_only_insecure_payments_secret"  # noqa: S105
DEVELOPMENT_HUBSPOT_CLIENT_SECRET: Final = "dev-only-insecure-hubspot-client-secret"  # noqa: S105

_DEVELOPMENT_SECRETS: Final = frozenset(
    {DEVELOPMENT_STRIPE_SECRET_KEY, DEVELOPMENT_STRIPE_WEBHOOK_SECRET,
     DEVELOPMENT_HUBSPOT_CLIENT_SECRET}
)
# Stripe rotates by keeping the old secret live for up to 24 h next to the new one; more than
# a handful of live secrets means a rotation was never finished.
WEBHOOK_SECRETS_MAX: Final = 4

Seconds = Annotated[float, msgspec.Meta(gt=0, le=300)]


class PaymentsSettings(ServiceSettings, frozen=True, kw_only=True):
    """Read from STRIPE_SECRET_KEY, STRIPE_WEBHOOK_SECRETS, ... (or PAYMENTS_<NAME>)."""

    stripe_secret_key: str = DEVELOPMENT_STRIPE_SECRET_KEY
    # Comma-separated: during a rotation both the new and the old endpoint secret are live.
    stripe_webhook_secrets: str = DEVELOPMENT_STRIPE_WEBHOOK_SECRET
    stripe_api_base: str = "https://api.stripe.com"
    # One attempt's budget; a checkout request makes at most stripe_attempts_max of them.
    stripe_timeout_s: Seconds = 10.0
    stripe_attempts_max: Annotated[int, msgspec.Meta(ge=1, le=10)] = 4
    stripe_retry_wait_initial_s: Annotated[float, msgspec.Meta(ge=0, le=10)] = 0.2
    stripe_retry_wait_max_s: Annotated[float, msgspec.Meta(ge=0, le=60)] = 5.0
    hubspot_client_secret: str = DEVELOPMENT_HUBSPOT_CLIENT_SECRET
    # The exact URL configured in HubSpot for the webhook, when a proxy stands in front of
    # the service (HubSpot signs the URL it called, not the one we see). Unset: the request's.
    hubspot_webhook_url: str | None = None
    # HubSpot notifications carry no amounts: the invoice is read back through the CRM API.
    hubspot_api_base: str = "https://api.hubapi.com"
    hubspot_access_token: str | None = None
    # The HubSpot invoice property in which sync_service stores our invoice id.
    hubspot_invoice_id_property: str = "billing_invoice_id"
    # Where Stripe sends the customer back to after checkout (the portal).
    public_base_url: str = "http://127.0.0.1:8002"
    topup_amount_min: str = "10.00"
    topup_amount_max: str = "10000.00"
    outbox_poll_interval_s: Seconds = 1.0

    def __post_init__(self) -> None:
        try:
            low, high = to_micros(self.topup_amount_min), to_micros(self.topup_amount_max)
        except MoneyError as exc:
            raise SettingsError(f"TOPUP_AMOUNT_MIN / TOPUP_AMOUNT_MAX: {exc}") from None
        if not 0 < low <= high:
            raise SettingsError("TOPUP_AMOUNT_MIN must be positive and at most TOPUP_AMOUNT_MAX")
        if not self.webhook_secrets:
            raise SettingsError("STRIPE_WEBHOOK_SECRETS must name at least one secret")
        if len(self.webhook_secrets) > WEBHOOK_SECRETS_MAX:
            raise SettingsError(f"STRIPE_WEBHOOK_SECRETS holds more than {WEBHOOK_SECRETS_MAX}")
        for name, url in (("STRIPE_API_BASE", self.stripe_api_base),
                          ("HUBSPOT_API_BASE", self.hubspot_api_base),
                          ("PUBLIC_BASE_URL", self.public_base_url)):
            if not url.startswith(("http://", "https://")):
                raise SettingsError(f"{name} must be an http(s) URL")

    @property
    def webhook_secrets(self) -> tuple[str, ...]:
        return tuple(s.strip() for s in self.stripe_webhook_secrets.split(",") if s.strip())

    @property
    def topup_min_micros(self) -> int:
        return to_micros(self.topup_amount_min)

    @property
    def topup_max_micros(self) -> int:
        return to_micros(self.topup_amount_max)

    def require_production_secrets(self) -> None:
        super().require_production_secrets()
        if not self.is_production:
            return
        # Names only: a value must never reach an error message or a log line.
        missing = [
            name
            for name, value in (
                ("STRIPE_SECRET_KEY", self.stripe_secret_key),
                ("HUBSPOT_CLIENT_SECRET", self.hubspot_client_secret),
                ("HUBSPOT_ACCESS_TOKEN", self.hubspot_access_token or ""),
            )
            if not value or value in _DEVELOPMENT_SECRETS
        ]
        if any(s in _DEVELOPMENT_SECRETS for s in self.webhook_secrets):
            missing.append("STRIPE_WEBHOOK_SECRETS")
        if missing:
            raise SettingsError(
                "APP_ENV=production needs real values for " + ", ".join(missing)
                + "; the development defaults are refused"
            )
        if not all(s.startswith("whsec_") for s in self.webhook_secrets):
            raise SettingsError("STRIPE_WEBHOOK_SECRETS: each Stripe endpoint secret starts whsec_")
        if not self.stripe_api_base.startswith("https://"):
            raise SettingsError("STRIPE_API_BASE must be https in production")
        if not self.public_base_url.startswith("https://"):
            raise SettingsError("PUBLIC_BASE_URL must be https in production")
