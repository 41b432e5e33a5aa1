"""Recurring fees the ledger charged become their own invoice lines, named by their item."""

from invoicing_service.domain.lines import UsageTotal, usage_drafts


def test_a_fee_is_a_line_of_its_own_naming_the_number_and_saying_when_it_was_prorated() -> None:
    drafts = usage_drafts([
        UsageTotal(product="sms", unit_price_micros=39_500, period="2026-11", quantity=300,
                   amount_micros=11_850_000),
        UsageTotal(product="vmn", unit_price_micros=2_000_000, period="2026-11", quantity=1,
                   amount_micros=1_066_667, kind="fee", reference="+447700900123"),
        UsageTotal(product="shortcode_keyword", unit_price_micros=50_000_000, period="2026-11",
                   quantity=1, amount_micros=50_000_000, kind="fee", reference="PIZZA"),
    ], "2026-11")
    by_product = {d.product: d for d in drafts}
    assert by_product["vmn"].description == \
        "vmn +447700900123: 1 x 2.00, prorated by days (2026-11)"
    assert by_product["vmn"].exact_net_micros == 1_066_667  # the ledger's amount, not 1 x 2.00
    assert by_product["shortcode_keyword"].description == \
        "shortcode_keyword PIZZA: 1 x 50.00 (2026-11)"
    assert by_product["sms"].description == "sms: 300 x 0.0395 (2026-11)"
