"""Input checks shared by the account's commands: each raises a typed error before anything
is recorded, so a rejected command writes nothing."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Final, cast

from contracts.ids import KEY_LENGTH_MAX
from contracts.money import AMOUNT_MICROS_MAX
from ledger_service.domain.errors import InvalidAmount, InvalidRequest, InvalidSetting
from ledger_service.domain.times import check_aware
from ledger_service.domain.values import TaxProfile

MEMO_LENGTH_MIN: Final = 10
MEMO_LENGTH_MAX: Final = 500
TEXT_LENGTH_MAX: Final = 500
REFERENCE_LENGTH_MAX: Final = 256
PRODUCT_LENGTH_MAX: Final = 64
# One stored event carries one account's lines of one intake batch; the bound keeps a single
# event row (and the transaction that writes it) a known size.
USAGE_LINES_PER_COMMAND_MAX: Final = 5_000
PROVIDER_LENGTH_MAX: Final = 32


def check_now(now: datetime) -> datetime:
    return check_aware(now).astimezone(UTC)


def is_key(value: object) -> bool:
    return (isinstance(value, str) and 0 < len(value) <= KEY_LENGTH_MAX
            and value.isascii() and value.isprintable() and " " not in value)


def check_key(value: object, name: str) -> str:
    if not is_key(value):
        raise InvalidRequest(f"{name} must be 1-{KEY_LENGTH_MAX} visible ASCII characters")
    return cast(str, value)


def is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_amount(value: object, name: str = "amount_micros") -> int:
    if not is_int(value) or not 0 < cast(int, value) <= AMOUNT_MICROS_MAX:
        raise InvalidAmount(f"{name} must be a positive integer of micros, got {value!r}")
    return cast(int, value)


def check_non_negative(value: object, name: str) -> int:
    if not is_int(value) or not 0 <= cast(int, value) <= AMOUNT_MICROS_MAX:
        raise InvalidAmount(f"{name} must be a non-negative integer of micros, got {value!r}")
    return cast(int, value)


def check_text(value: object, name: str, length_max: int = TEXT_LENGTH_MAX) -> str:
    if not isinstance(value, str) or len(value) > length_max:
        raise InvalidRequest(f"{name} must be a string of at most {length_max} characters")
    return value


NAME_LENGTH_MAX: Final = 200


def check_name(value: object) -> str | None:
    """An account's display name: optional, 1-200 characters of text."""
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip() or len(value) > NAME_LENGTH_MAX:
        raise InvalidRequest(f"name must be 1-{NAME_LENGTH_MAX} characters")
    return value


def check_choice(value: object, name: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise InvalidSetting(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return cast(str, value)


def check_tax(tax: object) -> TaxProfile:
    if not isinstance(tax, TaxProfile):
        raise InvalidSetting("tax must be a TaxProfile")
    country = tax.country
    if not (isinstance(country, str) and len(country) == 2 and country.isascii()
            and country.isalpha() and country.isupper()):
        raise InvalidSetting(f"tax country must be an ISO 3166 alpha-2 code, got {country!r}")
    if tax.vat_number is not None and not (
            isinstance(tax.vat_number, str) and 0 < len(tax.vat_number) <= 32):
        raise InvalidSetting("vat_number must be 1-32 characters or absent")
    if not isinstance(tax.reverse_charge, bool):
        raise InvalidSetting("reverse_charge must be a bool")
    return tax


def check_provider(provider: object) -> str:
    if not (isinstance(provider, str) and 0 < len(provider) <= PROVIDER_LENGTH_MAX
            and provider.isascii() and provider.replace("_", "").isalnum()
            and provider.islower()):
        raise InvalidRequest(f"provider must be a lower-case identifier, got {provider!r}")
    return provider


def check_credit_limit(account_type: str, credit_limit_micros: int) -> int:
    check_non_negative(credit_limit_micros, "credit_limit_micros")
    if account_type != "postpay" and credit_limit_micros != 0:
        raise InvalidSetting("only postpay accounts have a credit limit")
    return credit_limit_micros
