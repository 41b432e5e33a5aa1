"""The aggregate through eventsourcing's store: replay, snapshots, hash chain, postings;
plus settings and rating."""

from collections.abc import Iterator
from dataclasses import FrozenInstanceError
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import uuid4

import msgspec
import pytest
from eventsourcing.application import Application

from ledger_service.domain import (
    GENESIS_HASH,
    BillingAccount,
    InvalidRequest,
    InvalidSetting,
    PriceCatalog,
    TaxProfile,
    UnknownProduct,
    UsageLine,
    compute_chain_hash,
    debit_refs_of,
    event_payload,
    load_default_catalog,
    replay_postings,
    replay_postings_by_currency,
    verify_chain,
)
from ledger_service.domain.postings import customer_balance_micros, event_postings

T0 = datetime(2026, 2, 20, 9, 0, tzinfo=UTC)
POUND = 1_000_000
PRICE = 39_500


class Ledger(Application):
    pass


class SnapshottingLedger(Application):
    snapshotting_intervals = {BillingAccount: 4}


def busy_account() -> BillingAccount:
    """An account that has been through every kind of event."""
    account = BillingAccount.open(uuid4(), T0, account_type="trial", currency="EUR",
                                  low_balance_threshold_micros=3 * POUND,
                                  tax=TaxProfile("IE", "IE1234567T", reverse_charge=True))
    t = T0
    account.grant("promo", "signup_promo", 5 * POUND, t, expires_at=t + timedelta(days=30))
    account.grant("bonus", "bonus", POUND, t, expires_at=t + timedelta(days=1))
    account.authorize("h1", "r1", "sms", 10, PRICE, t + timedelta(minutes=5), t)
    account.record_usage([UsageLine("e1", "sms", 10, PRICE, "submitted", t, hold_id="h1"),
                          UsageLine("e2", "sms", 1, PRICE, "delivered", t)], t)
    t += timedelta(days=2)
    account.expire_grants(t)
    account.change_type("prepay", t, actor="ops")
    account.purchase_credit("pay-1", "stripe", 20 * POUND, "EUR", t, reference="cs_test_1")
    account.set_price_override("sms", 30_000, t, actor="ops")
    account.change_settings(t, tier="enterprise", billing_basis="delivered")
    account.authorize("h2", "r2", "sms", 1, 30_000, t + timedelta(minutes=5), t)
    account.authorize("h3", "r3", "sms", 1, 30_000, t + timedelta(minutes=5), t)
    account.release_hold("h3", t)
    account.expire_holds(t + timedelta(minutes=10))
    usage = [UsageLine(f"u{i}", "sms", 100, 30_000, "delivered", t) for i in range(6)]
    account.record_usage(usage, t)
    recorded = next(e for e in reversed(account.pending_events)
                    if type(e).__name__ == "UsageRecorded")
    account.refund("ref-1", debit_refs_of(recorded)[0], 1_000_000, "test", "ops", t)
    account.adjust("adj-1", "debit", 2 * POUND, "manual correction here", "ops", t)
    account.adjust("adj-2", "credit", POUND, "goodwill after incident", "ops", t)
    account.reverse_payment("pay-1", "stripe", POUND, t)
    account.close(t, reason="done", actor="ops")
    return account


@pytest.fixture
def saved() -> Iterator[tuple[Ledger, BillingAccount]]:
    app = Ledger()
    account = busy_account()
    app.save(account)
    yield app, account
    app.close()


def stored_events(app: Application, account: BillingAccount) -> list[Any]:
    return list(app.repository.event_store.get(account.id))


def test_the_busy_account_touches_every_event_class(saved: tuple[Ledger, BillingAccount]) -> None:
    app, account = saved
    seen = {type(e).__name__ for e in stored_events(app, account)}
    assert seen >= {
        "Opened", "CreditGranted", "HoldPlaced", "UsageRecorded", "GrantsExpired",
        "TypeChanged", "CreditPurchased", "PriceOverrideSet", "SettingsChanged",
        "HoldReleased", "HoldsExpired", "Refunded", "Adjusted", "PaymentReversed",
        "BalanceLow", "Closed"}


def test_replay_from_the_store_equals_the_live_account(
        saved: tuple[Ledger, BillingAccount]) -> None:
    app, account = saved
    reloaded = app.repository.get(account.id)
    assert reloaded == account
    assert reloaded.balance_micros == account.balance_micros
    assert reloaded.grants == account.grants
    reloaded.check_invariants()


def test_snapshot_round_trip_equals_the_live_account() -> None:
    app = SnapshottingLedger()
    account = busy_account()
    app.save(account)
    snapshots = list(app.snapshots.get(account.id)) if app.snapshots else []
    assert snapshots
    from_snapshot: Any = snapshots[-1].mutate(None)
    assert from_snapshot.version == snapshots[-1].originator_version
    assert app.repository.get(account.id) == account
    # a snapshot holds only JSON primitives, no transcoded custom types
    state = snapshots[-1].state
    msgspec.json.encode({k: v for k, v in state.items()
                         if k not in ("_created_on", "_modified_on")})
    app.close()


def test_every_event_balances_and_the_customer_postings_are_the_balance(
        saved: tuple[Ledger, BillingAccount]) -> None:
    app, account = saved
    events = stored_events(app, account)
    for event in events:
        totals: dict[str, int] = {}
        for p in event_postings(event):
            totals[p["currency"]] = totals.get(p["currency"], 0) + p["amount_micros"]
        assert all(total == 0 for total in totals.values()), type(event).__name__
    sums = replay_postings(events)
    assert customer_balance_micros(sums, account.id) == account.balance_micros
    assert sums.get(f"customer:{account.id}:held", 0) == account.held_micros
    assert set(replay_postings_by_currency(events)) == {"EUR"}


def test_the_chain_verifies_after_a_round_trip_through_the_store(
        saved: tuple[Ledger, BillingAccount]) -> None:
    app, account = saved
    events = stored_events(app, account)
    assert verify_chain(events) == []
    assert events[-1].chain_hash == account.chain_hash


def test_the_chain_detects_a_changed_field(saved: tuple[Ledger, BillingAccount]) -> None:
    app, account = saved
    events = stored_events(app, account)
    victim = next(e for e in events if type(e).__name__ == "UsageRecorded")
    with pytest.raises(FrozenInstanceError):
        victim.lines = []
    lines = [dict(line) for line in victim.lines]
    lines[0]["amount_micros"] += 1
    object.__setattr__(victim, "lines", lines)

    breaks = verify_chain(events)

    assert [(b.originator_version, b.reason) for b in breaks] == [
        (victim.originator_version, "hash_mismatch")]


def test_the_chain_detects_a_rewritten_hash_at_the_successor(
        saved: tuple[Ledger, BillingAccount]) -> None:
    app, account = saved
    events = stored_events(app, account)
    victim = events[3]
    object.__setattr__(victim, "reason", "edited")  # the Opened payload has no reason field
    payload = event_payload(victim)
    previous = events[2].chain_hash
    object.__setattr__(victim, "chain_hash", compute_chain_hash(
        previous, type(victim).__name__, victim.originator_version, victim.timestamp, payload))

    breaks = verify_chain(events)

    assert [b.originator_version for b in breaks] == [victim.originator_version + 1]


def test_the_chain_detects_a_missing_event(saved: tuple[Ledger, BillingAccount]) -> None:
    app, account = saved
    events = stored_events(app, account)
    del events[2]
    assert {b.reason for b in verify_chain(events)} == {"version_gap", "hash_mismatch"}


def test_the_first_event_chains_from_64_zeros() -> None:
    account = BillingAccount.open(uuid4(), T0, account_type="prepay")
    opened_event = account.pending_events[0]
    assert account.chain_hash == compute_chain_hash(
        GENESIS_HASH, "Opened", 1, T0, event_payload(opened_event))


def test_payload_fields_are_json_primitives(saved: tuple[Ledger, BillingAccount]) -> None:
    app, account = saved
    for event in stored_events(app, account):
        payload = event_payload(event)
        assert msgspec.json.decode(msgspec.json.encode(payload)) == payload


def test_settings_changes_record_only_what_changed() -> None:
    account = BillingAccount.open(uuid4(), T0, account_type="postpay",
                                  credit_limit_micros=POUND)
    account.collect_events()
    assert account.change_settings(T0, credit_limit_micros=POUND, tier="starter") is False
    assert account.pending_events == []
    assert account.change_settings(T0, credit_limit_micros=2 * POUND, tier="starter",
                                   low_balance_threshold_micros=POUND)
    changed: Any = next(e for e in account.pending_events
                        if type(e).__name__ == "SettingsChanged")
    assert changed.changes == {"credit_limit_micros": 2 * POUND,
                               "low_balance_threshold_micros": POUND}
    assert account.settings.credit_limit_micros == 2 * POUND
    # postpay compares the threshold with what it may still spend: 0 + a 2-pound limit
    assert all(type(e).__name__ != "BalanceLow" for e in account.pending_events)
    # raising the threshold above that headroom counts as a crossing
    assert account.change_settings(T0, low_balance_threshold_micros=3 * POUND)
    assert type(account.pending_events[-1]).__name__ == "BalanceLow"


def test_postpay_is_warned_as_it_nears_its_credit_limit_not_on_its_first_debit() -> None:
    account = BillingAccount.open(uuid4(), T0, account_type="postpay",
                                  credit_limit_micros=10 * POUND,
                                  low_balance_threshold_micros=2 * POUND)
    account.collect_events()
    account.adjust("a1", "debit", 7 * POUND, "monthly usage accrual", "ops", T0)
    assert all(type(e).__name__ != "BalanceLow" for e in account.collect_events())
    account.adjust("a2", "debit", 2 * POUND, "monthly usage accrual", "ops", T0)
    assert [type(e).__name__ for e in account.collect_events()][-1] == "BalanceLow"


@pytest.mark.parametrize("settings", [
    {"account_type": "gold"},
    {"account_type": "prepay", "currency": "JPY"},
    {"account_type": "prepay", "tier": "platinum"},
    {"account_type": "prepay", "credit_limit_micros": POUND},
    {"account_type": "prepay", "billing_basis": "read"},
    {"account_type": "prepay", "tax": TaxProfile("gb")},
])
def test_open_refuses_bad_settings(settings: dict[str, Any]) -> None:
    with pytest.raises(InvalidSetting):
        BillingAccount.open(uuid4(), T0, **settings)


def test_open_needs_a_timezone_aware_now() -> None:
    with pytest.raises(InvalidRequest):
        BillingAccount.open(uuid4(), datetime(2026, 2, 20), account_type="prepay")


def test_default_catalogue_carries_the_seed_prices() -> None:
    catalog = load_default_catalog()
    assert catalog.unit_price_micros("sms", "starter", "GBP") == 39_500
    assert catalog.unit_price_micros("sms", "enterprise", "GBP") == 34_000
    assert catalog.unit_price_micros("vmn", "starter", "GBP") == 2_000_000
    assert catalog.unit_price_micros("ai", "enterprise", "GBP") == 200_000
    assert catalog.skus["rcs_basic"] == "QSMS-RCS-BASIC"
    for product in ("sms", "rcs_basic", "rcs_single", "vmn", "shortcode_keyword", "ai"):
        for currency in ("GBP", "EUR", "USD"):
            assert catalog.unit_price_micros(product, "starter", currency) > 0


def test_bespoke_pays_enterprise_prices_unless_the_catalogue_says_otherwise() -> None:
    catalog = PriceCatalog.from_message({"version": 2, "products": [
        {"key": "sms", "sku": "QSMS-SMS", "tier": "enterprise", "unit_prices": {"GBP": "0.034"}},
        {"key": "ai", "tier": "enterprise", "unit_prices": {"GBP": "0.20"}},
        {"key": "ai", "tier": "bespoke", "unit_prices": {"GBP": "0.15"}},
    ]})
    assert catalog.unit_price_micros("sms", "bespoke", "GBP") == 34_000
    assert catalog.unit_price_micros("ai", "bespoke", "GBP") == 150_000
    assert catalog.version == "2"


def test_an_account_override_wins_over_the_catalogue_and_unknown_products_are_errors() -> None:
    catalog = load_default_catalog()
    account = BillingAccount.open(uuid4(), T0, account_type="prepay", tier="enterprise")
    assert account.unit_price_for("sms", catalog) == 34_000
    account.set_price_override("sms", 25_000, T0, actor="ops")
    assert account.unit_price_for("sms", catalog) == 25_000
    account.clear_price_override("sms", T0)
    assert account.unit_price_for("sms", catalog) == 34_000
    with pytest.raises(UnknownProduct):
        account.unit_price_for("fax", catalog)
    eur = BillingAccount.open(uuid4(), T0, account_type="prepay", currency="EUR")
    assert eur.unit_price_for("sms", catalog) == 46_000


@pytest.mark.parametrize("price", ["0.0000001", "-1", "1e-3", "abc"])
def test_catalogue_prices_are_exact_or_refused(price: str) -> None:
    with pytest.raises(InvalidRequest):
        PriceCatalog.from_message({"version": "x", "products": [
            {"key": "sms", "tier": "starter", "unit_prices": {"GBP": price}}]})


def test_the_chain_covers_the_timestamp(saved: tuple[Ledger, BillingAccount]) -> None:
    app, account = saved
    events = stored_events(app, account)
    object.__setattr__(events[1], "timestamp", events[1].timestamp + timedelta(seconds=1))
    assert [b.originator_version for b in verify_chain(events)] == [2]
