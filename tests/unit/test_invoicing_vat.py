"""VAT terms per customer, and the rounding rule of invoice lines and VAT."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from invoicing_service.domain.lines import UsageTotal, breakdown, credit_lines, price, usage_drafts
from invoicing_service.domain.rounding import allocate, round_to_minor, vat_on
from invoicing_service.domain.vat import TaxProfile, VatTerms, has_valid_format, terms_for


class FakeVies:
    """The registry check's fake: answers from a table, never the network."""

    def __init__(self, answers: dict[str, bool | None]) -> None:
        self.answers = answers
        self.asked: list[str] = []

    def is_registered(self, country: str, vat_number: str) -> bool | None:
        self.asked.append(vat_number)
        return self.answers.get(vat_number)


def test_a_uk_customer_pays_uk_standard_vat() -> None:
    assert terms_for(TaxProfile("GB")) == VatTerms("standard", "20")
    assert terms_for(TaxProfile("GB", "GB980780684")) == VatTerms("standard", "20")


def test_an_eu_business_with_a_valid_vat_number_is_reverse_charged() -> None:
    terms = terms_for(TaxProfile("DE", "DE136695976"))
    assert terms == VatTerms("reverse_charge", "0")
    assert terms.note is not None and "Reverse charge" in terms.note


def test_a_vat_number_that_fails_its_check_digits_is_no_evidence_of_business() -> None:
    assert not has_valid_format("DE", "DE136695977")
    assert terms_for(TaxProfile("DE", "DE136695977")) == VatTerms("outside_scope", "0")


def test_customers_outside_the_uk_without_a_vat_number_are_outside_scope() -> None:
    assert terms_for(TaxProfile("FR")) == VatTerms("outside_scope", "0")
    assert terms_for(TaxProfile("US")) == VatTerms("outside_scope", "0")


def test_a_non_eu_business_with_a_valid_number_is_reverse_charged_too() -> None:
    assert terms_for(TaxProfile("NO", "NO974760673MVA")).treatment == "reverse_charge"


def test_the_billing_profiles_exemption_wins() -> None:
    assert terms_for(TaxProfile("GB", exemption="zero_rated")) == VatTerms("zero_rated", "0")
    assert terms_for(TaxProfile("GB", exemption="exempt")) == VatTerms("exempt", "0")


def test_a_registry_that_reports_the_number_invalid_removes_the_reverse_charge() -> None:
    vies = FakeVies({"DE136695976": False})
    assert terms_for(TaxProfile("DE", "DE136695976"), vies).treatment == "outside_scope"
    assert vies.asked == ["DE136695976"]
    assert terms_for(TaxProfile("DE", "DE136695976"), FakeVies({})).treatment == "reverse_charge"


@pytest.mark.parametrize(("micros", "rounded"), [
    (4_999, 0), (5_000, 10_000), (14_999, 10_000), (15_000, 20_000), (-5_000, -10_000),
    (39_500_000, 39_500_000),
])
def test_nets_round_half_up_to_pence(micros: int, rounded: int) -> None:
    assert round_to_minor(micros) == rounded


def test_vat_is_computed_per_rate_on_the_sum_of_rounded_nets() -> None:
    # three lines of 0.025 each: per line, 0.03 + VAT 0.01 each; per rate: 0.09 net, VAT 0.02
    totals = [UsageTotal(p, 25_000, "2026-10", 1, 25_000) for p in ("sms", "rcs_basic", "vmn")]
    lines = price(usage_drafts(totals, "2026-10"), VatTerms("standard", "20"))
    assert [line.net_micros for line in lines] == [30_000, 30_000, 30_000]
    assert sum(line.vat_micros for line in lines) == vat_on(90_000, "20") == 20_000
    assert breakdown(lines)[0].vat_micros == 20_000


@given(st.lists(st.integers(0, 10**12), min_size=1, max_size=20), st.integers(0, 10**8))
def test_allocation_shares_a_total_exactly_in_whole_pence(weights: list[int], pence: int) -> None:
    shares = allocate(pence * 10_000, weights)
    assert sum(shares) == (pence * 10_000 if sum(weights) else 0)
    assert all(share % 10_000 == 0 and share >= 0 for share in shares)


def test_late_usage_is_a_labelled_correction_line() -> None:
    totals = [UsageTotal("sms", 39_500, "2026-10", 10, 395_000),
              UsageTotal("sms", 39_500, "2026-09", 2, 79_000)]
    drafts = usage_drafts(totals, "2026-10")
    assert [d.correction for d in drafts] == [False, True]
    assert drafts[1].description.startswith("Correction: usage of 2026-09")


def test_a_full_credit_reverses_exactly_what_is_left_at_the_invoices_rates() -> None:
    lines = price(usage_drafts([UsageTotal("sms", 33_333, "2026-10", 7, 233_331)], "2026-10"),
                  VatTerms("standard", "20"))
    part = credit_lines(lines, [], 100_000, "part")
    rest = credit_lines(lines, part, None, "rest")
    assert sum(x.net_micros for x in part + rest) == sum(x.net_micros for x in lines)
    assert sum(x.vat_micros for x in part + rest) == sum(x.vat_micros for x in lines)
    assert {x.vat_rate for x in part + rest} == {"20"}
