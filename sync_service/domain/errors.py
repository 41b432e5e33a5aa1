"""Errors of the sync service, as types; the HTTP layer maps them to problem+json once."""

from __future__ import annotations


class SyncError(Exception):
    """Base of the sync service's domain errors."""


class TargetNotConfigured(SyncError):
    """The target has no credentials configured (e.g. XERO_CLIENT_ID unset)."""


class AuthorizationRefused(SyncError):
    """An OAuth callback was refused: unknown, expired, reused or stolen state, or a code or
    verifier the identity server rejected."""


class ConnectionNotFound(SyncError):
    pass


class DeadLetterNotFound(SyncError):
    pass


class SignatureRejected(SyncError):
    pass


class InvalidMapping(SyncError):
    """An operator mapping names something that cannot be used."""


# -- provider outcomes (raised by the Xero client, handled by the pusher) ---------------------


class ProviderError(SyncError):
    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class ProviderUnavailable(ProviderError):
    """Transient: network, timeout, 5xx. `outcome_unknown`: the request may have executed."""

    def __init__(self, message: str, *, status: int | None = None,
                 outcome_unknown: bool = True) -> None:
        super().__init__(message, status=status)
        self.outcome_unknown = outcome_unknown


class ProviderRateLimited(ProviderError):
    def __init__(self, message: str, *, retry_after_s: float) -> None:
        super().__init__(message, status=429)
        self.retry_after_s = retry_after_s


class ProviderUnauthorized(ProviderError):
    pass


class ProviderRejected(ProviderError):
    """A validation error (4xx): retrying the same request cannot succeed."""


class GrantBroken(ProviderError):
    """The refresh token was refused (invalid_grant): an operator must reconnect."""
