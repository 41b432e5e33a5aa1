"""format_micros: exact decimal text for any amount, and to_micros reads it back."""

from __future__ import annotations

import re
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from contracts.money import AMOUNT_MICROS_MAX, MoneyError, format_micros, to_micros

amounts = st.integers(min_value=-AMOUNT_MICROS_MAX, max_value=AMOUNT_MICROS_MAX)


@given(amounts)
def test_formatting_is_exact_and_reads_back(micros: int) -> None:
    text = format_micros(micros)
    assert re.fullmatch(r"-?\d+\.\d{2,6}", text), text
    assert Decimal(text) * 1_000_000 == micros  # no rounding, no float
    assert to_micros(text) == micros
    fraction = text.partition(".")[2]
    assert len(fraction) == 2 or not fraction.endswith("0")  # trimmed past two places


@pytest.mark.parametrize(("micros", "text"), [
    (100_000_000, "100.00"), (39_500, "0.0395"), (-1_234_500, "-1.2345"), (0, "0.00"),
    (-10_000, "-0.01"), (1, "0.000001"), (-999_999, "-0.999999"), (120_000_000, "120.00")])
def test_documented_examples(micros: int, text: str) -> None:
    assert format_micros(micros) == text


@pytest.mark.parametrize("value", [True, 1.5, "1", None])
def test_only_ints_are_formatted(value: object) -> None:
    with pytest.raises(MoneyError):
        format_micros(value)  # type: ignore[arg-type]
