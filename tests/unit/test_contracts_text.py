"""Free text refuses the characters PostgreSQL cannot store, or a person cannot read back.

Issue 14, item 1: a NUL in a usage reference, a credit reason or an adjustment memo was
accepted, billed, and then stopped every projection. The contracts now refuse it at decode
time, so an HTTP body is a 422 and a NATS message a dead letter.
"""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from contracts.http.ledger import Adjustment, GrantCredit, OpenAccount
from contracts.payments import PaymentReceived
from contracts.text import TEXT_PATTERN, is_storable_text
from contracts.usage import UsageRecorded
from tests.unit.test_contracts_validation import decode, rejects, with_field

TEXT_FIELDS = [
    (UsageRecorded, "reference"),
    (GrantCredit, "reason"),
    (Adjustment, "memo"),
    (OpenAccount, "name"),
    (PaymentReceived, "provider_reference"),
]
REFUSED = ["ref\x00x", "\x00", "bell\x07 ring", "esc\x1b[31m red", "form\x0cfeed", "unit\x1fsep"]
ACCEPTED = ["tab\tseparated memo", "two\r\nlines of memo", "ends with newline\n",
            "caf\u00e9 \u20ac5 \U0001f600 memo", "delete\x7f char memo"]


@pytest.mark.parametrize(("shape", "path"), TEXT_FIELDS,
                         ids=[f"{s.__name__}.{p}" for s, p in TEXT_FIELDS])
@pytest.mark.parametrize("text", REFUSED)
def test_text_with_a_c0_control_character_is_refused(
    shape: type[msgspec.Struct], path: str, text: str
) -> None:
    message = rejects(shape, with_field(shape, path, text))
    assert f"$.{path}" in message


@pytest.mark.parametrize(("shape", "path"), TEXT_FIELDS,
                         ids=[f"{s.__name__}.{p}" for s, p in TEXT_FIELDS])
@pytest.mark.parametrize("text", ACCEPTED)
def test_tab_newline_and_any_printable_unicode_are_accepted(
    shape: type[msgspec.Struct], path: str, text: str
) -> None:
    decoded: Any = decode(shape, with_field(shape, path, text))
    assert getattr(decoded, path) == text


@pytest.mark.parametrize("text", REFUSED + ACCEPTED)
def test_is_storable_text_agrees_with_the_pattern(text: str) -> None:
    import re

    assert is_storable_text(text) == (re.search(TEXT_PATTERN, text) is not None)


def test_the_exported_schema_carries_the_pattern() -> None:
    schema = msgspec.json.schema(UsageRecorded)
    reference = schema["$defs"]["UsageRecorded"]["properties"]["reference"]
    patterns = [branch.get("pattern") for branch in reference.get("anyOf", [reference])]
    assert TEXT_PATTERN in patterns
