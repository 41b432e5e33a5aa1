"""What each ledger event publishes on ledger.v1.events.*: signs, kinds, ids, and that every
message validates against its contract."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from uuid import uuid4

import msgspec

from contracts.subjects import MESSAGES
from ledger_service.domain.account import BillingAccount
from ledger_service.domain.fees import FeeCharge
from ledger_service.domain.values import UsageLine
from ledger_service.publisher import messages_for

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
POUND = 1_000_000


def published(account: BillingAccount) -> list[tuple[str, str, dict[str, object]]]:
    out = []
    for event in account.collect_events():
        for subject, msg_id, message in messages_for(event, "GBP"):
            raw = msgspec.json.encode(message)
            msgspec.json.decode(raw, type=MESSAGES[subject])  # the wire form is valid
            out.append((subject.rsplit(".", 1)[-1], msg_id, msgspec.json.decode(raw)))
    return out


def line(event_id: str, quantity: int = 1, **kw: object) -> UsageLine:
    return UsageLine(event_id=event_id, product="sms", quantity=quantity,
                     unit_price_micros=39_500, status="submitted", occurred_at=T0, **kw)  # type: ignore[arg-type]


def test_credits_are_positive_entries_and_usage_lines_are_negative_ones() -> None:
    account = BillingAccount.open(uuid4(), T0, account_type="prepay")
    account.grant("g1", "purchased", 10 * POUND, T0, reason="top-up", actor="ops")
    account.record_usage([line("m1"), line("m2", 2)], T0)
    kinds = [(k, m["kind"], m["amount"], m["balance_after"]) for k, _, m in published(account)]
    assert kinds == [
        ("entry_posted", "grant", "10.00", "10.00"),
        ("entry_posted", "usage", "-0.0395", "9.9605"),
        ("entry_posted", "usage", "-0.079", "9.8815"),
    ]


def test_each_usage_line_is_its_own_entry_with_its_own_message_id() -> None:
    account = BillingAccount.open(uuid4(), T0, account_type="prepay")
    account.grant("g1", "purchased", POUND, T0)
    account.record_usage([line("m1"), line("m2")], T0)
    ids = [msg_id for kind, msg_id, _ in published(account) if kind == "entry_posted"]
    assert len(ids) == len(set(ids)) == 3


def test_a_debit_adjustment_and_a_payment_reversal_are_negative() -> None:
    account = BillingAccount.open(uuid4(), T0, account_type="prepay")
    account.purchase_credit("p1", "stripe", 5 * POUND, "GBP", T0, reference="cs_1")
    account.adjust("a1", "debit", POUND, "Correcting a duplicate charge", "ops", T0)
    account.reverse_payment("p1", "stripe", 2 * POUND, T0, reason="refund")
    amounts = [(m["kind"], m["amount"]) for _, _, m in published(account)]
    assert amounts == [("topup", "5.00"), ("adjustment", "-1.00"), ("payment_refund", "-2.00")]


def test_low_balance_overdraft_and_expiries_publish_their_own_messages() -> None:
    account = BillingAccount.open(uuid4(), T0, account_type="prepay",
                                  low_balance_threshold_micros=POUND)
    account.grant("promo", "signup_promo", 2 * POUND, T0, expires_at=T0 + timedelta(days=1))
    account.authorize("h1", "r1", "sms", 1, 39_500, T0 + timedelta(minutes=5), T0)
    account.record_usage([line("m1", 40)], T0)  # 1.58: below the threshold
    account.expire_holds(T0 + timedelta(minutes=10))
    account.expire_grants(T0 + timedelta(days=2))
    account.record_usage([line("m2", 100)], T0 + timedelta(days=2))  # no credit left
    kinds = [kind for kind, _, _ in published(account)]
    for expected in ("balance_low", "hold_expired", "grants_expired", "account_overdrawn"):
        assert expected in kinds, kinds


def test_an_invoice_payment_is_an_invoice_payment_entry_that_settles_the_deficit() -> None:
    account = BillingAccount.open(uuid4(), T0, account_type="postpay",
                                  credit_limit_micros=50 * POUND)
    account.record_usage([line("m1", 100)], T0)  # 3.95 accrued
    account.purchase_credit("inv-pay", "stripe", 3_950_000, "GBP", T0, purpose="invoice")
    entries = [(m["kind"], m["balance_after"]) for k, _, m in published(account)
               if k == "entry_posted"]
    assert entries == [("usage", "-3.95"), ("invoice_payment", "0.00")]
    assert account.deficit_micros == 0


def test_each_settings_event_publishes_the_accounts_full_settings_after_it() -> None:
    from ledger_service.domain.values import TaxProfile
    from ledger_service.publisher import account_updated, is_settings_event

    account_id = uuid4()
    account = BillingAccount.open(account_id, T0, account_type="prepay", currency="EUR",
                                  tax=TaxProfile(country="DE", vat_number="DE136695976",
                                                 reverse_charge=True), name="Acme GmbH")
    account.grant("g1", "purchased", POUND, T0)
    account.change_type("postpay", T0, credit_limit_micros=50 * POUND)
    account.close(T0, reason="gone")
    events = account.collect_events()
    replayed: BillingAccount | None = None
    published_settings = []
    for event in events:
        replayed = event.mutate(replayed)  # the account as it stood right after the event
        if is_settings_event(event):
            assert replayed is not None
            subject, msg_id, message = account_updated(event, replayed)
            raw = msgspec.json.encode(message)
            decoded = msgspec.json.decode(raw, type=MESSAGES[subject])
            assert msg_id == decoded.event_id == f"account_updated:{account_id}:{event.originator_version}"
            published_settings.append(decoded)
    assert [(m.account_type, m.credit_limit, m.closed) for m in published_settings] == [
        ("prepay", "0.00", False), ("postpay", "50.00", False), ("postpay", "50.00", True)]
    assert all(m.currency == "EUR" and m.tax.country == "DE" and m.tax.reverse_charge
               and m.tax.vat_number == "DE136695976" and m.name == "Acme GmbH"
               for m in published_settings)
    assert [m.version for m in published_settings] == sorted(m.version for m in published_settings)


def test_a_fee_is_published_as_a_negative_fee_entry_with_its_product_price_and_reference(
        ) -> None:
    account = BillingAccount.open(uuid4(), T0, account_type="prepay")
    account.grant("g1", "purchased", 10 * POUND, T0)
    account.charge_fee(FeeCharge(charge_key="recurring:i1:2026-11", product="vmn", quantity=1,
                                 unit_price_micros=2 * POUND, reference="+447700900123",
                                 period="2026-11"), T0)
    (_, (subject, _, fee)) = published(account)
    assert subject == "entry_posted"
    assert (fee["kind"], fee["amount"], fee["balance_after"], fee["product"], fee["quantity"],
            fee["unit_price"], fee["reference"]) == (
        "fee", "-2.00", "8.00", "vmn", 1, "2.00", "+447700900123")


def test_a_batch_of_fees_publishes_exactly_the_messages_the_fees_one_at_a_time_did() -> None:
    """One FeesCharged event: one entry_posted per fee, each the very message (id, amount,
    balance after, product, price, reference, time) a FeeCharged of that fee published."""
    account_id = uuid4()
    fees = [FeeCharge(charge_key=f"recurring:i{n}:2026-11", product="vmn", quantity=1 + n % 2,
                      unit_price_micros=2 * POUND, reference=f"+44770090012{n}",
                      period="2026-11", days=17 if n == 1 else None,
                      days_in_period=30 if n == 1 else None) for n in range(3)]
    twins = []
    for _ in range(2):
        account = BillingAccount.open(account_id, T0, account_type="prepay")
        account.grant("g1", "purchased", 10 * POUND, T0)
        published(account)
        twins.append(account)
    one_by_one, batched = twins
    for fee in fees:
        one_by_one.charge_fee(fee, T0)
    batched.charge_fees(fees, T0)
    singles, together = published(one_by_one), published(batched)
    assert [m for m in together if m[0] == "entry_posted"] == [
        m for m in singles if m[0] == "entry_posted"]
    assert len([m for m in together if m[0] == "entry_posted"]) == 3
