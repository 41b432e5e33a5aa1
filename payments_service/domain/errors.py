"""Domain errors of the payments service. The HTTP layer maps each to problem+json once."""

from __future__ import annotations


class PaymentsError(Exception):
    """Base of every error the payments service answers with a problem document."""


class SignatureRejected(PaymentsError):
    """A webhook's signature is missing, malformed, stale or does not match."""


class MalformedWebhook(PaymentsError):
    """A correctly signed webhook whose body is not what the provider documents."""


class AmountNotPayable(PaymentsError):
    """The amount cannot be charged (fractions of a penny, or nothing left to pay)."""


class TopUpOutOfRange(PaymentsError):
    """A top-up below the minimum or above the maximum."""


class TaxProfileInvalid(PaymentsError):
    """A tax profile that cannot be applied, e.g. reverse charge without a VAT number."""


class TaxProfileForbidden(PaymentsError):
    """A portal caller tried to choose its own currency or VAT treatment."""


class AccountNotVisible(PaymentsError):
    """The account does not exist for this caller (another tenant's reads as absent)."""


class InvoiceNotFound(PaymentsError):
    """No invoice with that id is known (or it belongs to another tenant)."""


class InvoiceNotPayable(PaymentsError):
    """The invoice is paid, void, or has nothing left to pay."""


class IdempotencyKeyReused(PaymentsError):
    """The same Idempotency-Key was sent with a different request."""


class InvalidCursor(PaymentsError):
    """A paging cursor that this service did not issue."""


class ProviderUnavailable(PaymentsError):
    """The payment provider did not answer successfully within our bounded retries."""


class ProviderRejected(PaymentsError):
    """The payment provider refused the request (a 4xx other than rate limiting)."""
