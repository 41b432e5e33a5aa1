"""Settings of the sync service: the kernel's, plus Xero's endpoints, credentials and limits.

Xero is "not connected" until XERO_CLIENT_ID is set and an operator has connected an
organisation; nothing is ever pretended. Stored tokens are encrypted with the keys of
SYNC_ENCRYPTION_KEYS (``kid:base64key,...``; the first encrypts, all decrypt). In development
without keys a key is generated once under ``.run/`` (SYNC_DEV_KEY_PATH); with
``APP_ENV=production`` the service refuses to start without one.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from services.settings import ServiceSettings, SettingsError

Seconds = Annotated[float, msgspec.Meta(gt=0, le=86_400)]


class SyncSettings(ServiceSettings, frozen=True, kw_only=True):
    """Read from SYNC_<NAME> or <NAME> (e.g. SYNC_ENCRYPTION_KEYS, XERO_CLIENT_ID)."""

    encryption_keys: str | None = None
    # Where `make run` keeps its data (RUN_DIR); the development key is generated there.
    run_dir: str = ".run"
    dev_key_path: str | None = None
    xero_client_id: str | None = None
    # A PKCE app has no secret; a confidential app sends it with Basic auth.
    xero_client_secret: str | None = None
    xero_redirect_uri: str = "http://127.0.0.1:8004/v1/connections/xero/callback"
    xero_scopes: str = ("offline_access accounting.contacts accounting.settings "
                        "accounting.invoices accounting.payments")
    xero_login_base: str = "https://login.xero.com"
    xero_identity_base: str = "https://identity.xero.com"
    xero_api_base: str = "https://api.xero.com"
    xero_webhook_key: str | None = None
    xero_timeout_s: Seconds = 10.0
    # Xero's limits per organisation; the pacing spaces calls evenly within them.
    xero_calls_per_minute: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 60
    xero_minute_s: Seconds = 60.0
    xero_calls_per_day: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 5_000
    xero_concurrent_max: Annotated[int, msgspec.Meta(ge=1, le=5)] = 5
    # Fraction of the minute limit the even spacing of calls uses. What keeps Xero's count
    # within its limit whatever the network does is the pacer's window rule (app/pacing.py:
    # a call starts only while fewer than the limit are in flight or answered within the
    # window); the share keeps the spacing just under it, so that rule seldom has to wait.
    xero_pacing_share: Annotated[float, msgspec.Meta(gt=0, le=1)] = 0.99
    # Refresh an access token this long before it expires.
    xero_refresh_margin_s: Seconds = 120.0
    # Bank account a payment is recorded against when no mapping says otherwise.
    xero_payment_account_code: str = "090"
    xero_sales_account_code: str = "200"
    # Attempts of one change before it becomes a dead letter.
    attempts_max: Annotated[int, msgspec.Meta(ge=1, le=100)] = 8
    retry_wait_initial_s: Seconds = 1.0
    retry_wait_max_s: Seconds = 300.0
    # How long a claimed change belongs to a worker; a crashed worker's change comes back.
    lease_s: Seconds = 120.0
    poll_interval_s: Seconds = 1.0
    outbox_poll_interval_s: Seconds = 1.0
    # HubSpot (private app token): without it HubSpot is "not connected".
    hubspot_access_token: str | None = None
    hubspot_api_base: str = "https://api.hubapi.com"
    hubspot_catalog_interval_s: Seconds = 300.0
    hubspot_calls_per_window: Annotated[int, msgspec.Meta(ge=1, le=1_000)] = 100
    hubspot_window_s: Seconds = 10.0
    hubspot_timeout_s: Seconds = 10.0
    # The product properties holding our product key and tier (custom properties in HubSpot).
    hubspot_product_key_property: str = "billing_product_key"
    hubspot_tier_property: str = "billing_tier"
    # Push issued invoices (and their paid / void status) to HubSpot's invoices object.
    hubspot_push_invoices: bool = True

    def __post_init__(self) -> None:
        for name, url in (("XERO_LOGIN_BASE", self.xero_login_base),
                          ("XERO_IDENTITY_BASE", self.xero_identity_base),
                          ("XERO_API_BASE", self.xero_api_base),
                          ("XERO_REDIRECT_URI", self.xero_redirect_uri),
                          ("HUBSPOT_API_BASE", self.hubspot_api_base)):
            if not url.startswith(("http://", "https://")):
                raise SettingsError(f"{name} must be an http(s) URL")
        if self.encryption_keys:
            # Checked at start-up, with a message naming the variable, never the value.
            from sync_service.app.credentials import parse_keys

            parse_keys(self.encryption_keys)

    @property
    def development_key_path(self) -> str:
        return self.dev_key_path or f"{self.run_dir.rstrip('/')}/sync-dev.key"

    @property
    def xero_configured(self) -> bool:
        return bool(self.xero_client_id)

    def require_production_secrets(self) -> None:
        super().require_production_secrets()
        if not self.is_production:
            return
        if not self.encryption_keys:
            raise SettingsError(
                "APP_ENV=production needs SYNC_ENCRYPTION_KEYS (kid:base64 32-byte key, ...) to "
                "encrypt stored Xero credentials; generate one with "
                "`python -c \"import os,base64;print('k1:'+base64.b64encode(os.urandom(32))"
                ".decode())\"`"
            )
        if self.xero_configured and not self.xero_webhook_key:
            raise SettingsError("APP_ENV=production with XERO_CLIENT_ID needs XERO_WEBHOOK_KEY")
