"""Refusals of the invoicing domain, as types; http.py maps them to problem+json once."""

from __future__ import annotations


class InvoicingError(Exception):
    """Base of every refusal of the invoicing domain."""


class InvalidRequest(InvoicingError):
    pass


class BadCursor(InvoicingError):
    """A paging cursor this API did not issue (a malformed request: 400)."""


class InvoiceNotFound(InvoicingError):
    pass


class BillingRunNotFound(InvoicingError):
    pass


class AccountNotVisible(InvoicingError):
    pass


class InvoiceNotIssuable(InvoicingError):
    """Only a draft with at least one line is issued."""


class InvoiceNotVoidable(InvoicingError):
    """Only an open or overdue invoice with nothing paid on it is voided."""


class InvoiceNotPayable(InvoicingError):
    """A draft or void invoice takes no payment."""


class InvoiceNotCreditable(InvoicingError):
    """A draft or void invoice takes no credit note."""


class CreditExceedsInvoice(InvoicingError):
    """A credit note never credits more than is left of the invoice."""


class PeriodNotBillable(InvoicingError):
    """A billing run is for a finished month only."""


class IdempotencyKeyReused(InvoicingError):
    """The same Idempotency-Key came with a different request."""
