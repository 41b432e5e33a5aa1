"""HubSpot product rows as our price list: valid rows kept and normalised, others reported."""

from __future__ import annotations

from datetime import UTC, datetime

from sync_service.domain.catalogue import PropertyNames, read_catalogue, version_of

NAMES = PropertyNames()


def row(product_id: str, **properties: str) -> dict[str, object]:
    return {"id": product_id, "properties": properties}


def test_valid_rows_are_normalised_and_invalid_ones_reported() -> None:
    catalogue = read_catalogue([
        row("1", billing_product_key="sms", hs_sku="SMS-UK", billing_tier="Starter",
            hs_price_gbp="0.0395", hs_price_eur="0.045000"),
        row("2", billing_product_key="SMS", hs_sku="X", billing_tier="starter", hs_price_gbp="1"),
        row("3", billing_product_key="mms", hs_sku="", billing_tier="starter", hs_price_gbp="1"),
        row("4", billing_product_key="mms", hs_sku="M", billing_tier="gold", hs_price_gbp="1"),
        row("5", billing_product_key="mms", hs_sku="M", billing_tier="starter"),
        row("6", billing_product_key="mms", hs_sku="M", billing_tier="starter",
            hs_price_gbp="1.0000001"),
        row("7", billing_product_key="mms", hs_sku="M", billing_tier="starter",
            hs_price_gbp="-1"),
    ], NAMES)
    assert [(p.key, p.tier, p.unit_prices) for p in catalogue.products] == \
        [("sms", "starter", {"GBP": "0.0395", "EUR": "0.045"})]
    assert [r.split(":")[0] for r in catalogue.rejected] == ["2", "3", "4", "5", "6", "7"]


def test_two_rows_for_one_product_and_tier_are_both_left_out() -> None:
    catalogue = read_catalogue([
        row("1", billing_product_key="sms", hs_sku="A", billing_tier="starter", hs_price_gbp="1"),
        row("2", billing_product_key="sms", hs_sku="B", billing_tier="starter", hs_price_gbp="2"),
        row("3", billing_product_key="sms", hs_sku="C", billing_tier="enterprise",
            hs_price_gbp="1"),
    ], NAMES)
    assert [(p.key, p.tier) for p in catalogue.products] == [("sms", "enterprise")]
    assert len(catalogue.rejected) == 2


def test_the_hash_ignores_order_and_the_version_is_new_each_time() -> None:
    a = row("1", billing_product_key="sms", hs_sku="A", billing_tier="starter", hs_price_gbp="1")
    b = row("2", billing_product_key="mms", hs_sku="B", billing_tier="starter", hs_price_gbp="2")
    one, two = read_catalogue([a, b], NAMES), read_catalogue([b, a], NAMES)
    assert one.content_hash == two.content_hash
    at = datetime(2026, 11, 22, 9, 30, tzinfo=UTC)
    later = datetime(2026, 11, 22, 9, 31, tzinfo=UTC)
    assert version_of(one.content_hash, at) != version_of(one.content_hash, later)
    assert version_of(one.content_hash, at).startswith("hubspot-20261122T093000Z-")
