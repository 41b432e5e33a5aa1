"""Domain errors of the ledger.

Each error is a type so that the HTTP layer maps it to problem+json and the messaging layer to a
typed rejection in one place each. `code` is the machine reason: for the authorize reply it is
the contract's `reason` (`insufficient_funds`, `credit_limit_exceeded`, `account_closed`,
`unknown_product`, `invalid_request`); other codes are ours.

A command that raises has recorded nothing: every check runs before the first event.
"""

from __future__ import annotations


class LedgerError(Exception):
    code = "ledger_error"


class InvalidRequest(LedgerError):
    """Input the model cannot act on: a malformed key, a naive datetime, a bad enum value."""

    code = "invalid_request"


class InvalidAmount(InvalidRequest):
    code = "invalid_amount"


class InvalidMemo(InvalidRequest):
    code = "invalid_memo"


class InvalidSetting(InvalidRequest):
    code = "invalid_setting"


class CurrencyMismatch(InvalidRequest):
    """Money in another currency than the account's: never converted implicitly."""

    code = "currency_mismatch"


class UnknownProduct(LedgerError):
    code = "unknown_product"


class AccountClosed(LedgerError):
    code = "account_closed"


class InsufficientFunds(LedgerError):
    """A prepay or trial authorization that would take available below zero."""

    code = "insufficient_funds"


class CreditLimitExceeded(LedgerError):
    """A postpay authorization that would take available below minus the credit limit."""

    code = "credit_limit_exceeded"


class HoldNotFound(LedgerError):
    code = "hold_not_found"


class DuplicateKey(LedgerError):
    """A hold or grant id that is already in use on this account."""

    code = "duplicate_key"


class EntryNotFound(LedgerError):
    code = "entry_not_found"


class RefundExceedsDebit(LedgerError):
    code = "refund_exceeds_debit"


class InvalidTransition(LedgerError):
    """A change the account's lifecycle forbids: converting to trial, changing currency."""

    code = "invalid_transition"
