"""FastMapper encodes a ledger event's state with msgspec into exactly the bytes the library's
JSON transcoder (stdlib json, compact, non-ASCII kept) writes, whatever text the free-text
fields hold: the stored JSON of the log does not depend on which encoder wrote it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from uuid import UUID, uuid4

from eventsourcing.application import Application
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from ledger_service.domain import BillingAccount, LedgerError, UsageLine
from ledger_service.domain.values import TaxProfile
from ledger_service.projections.decoding import FastMapper

T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
# Any text but lone surrogates (which neither encoder writes as UTF-8).
any_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=60)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=any_text, actor=any_text, reason=any_text, memo=any_text, reference=any_text,
       vat=any_text, micros=st.integers(0, 999_999))
def test_fast_encoding_writes_the_library_s_bytes(name: str, actor: str, reason: str, memo: str,
                                                  reference: str, vat: str, micros: int) -> None:
    now = T0 + timedelta(microseconds=micros)
    # shaped to pass the domain's checks (lengths, a name and memo with some non-space)
    name = f"N{name}"[:200]
    try:
        account = BillingAccount.open(uuid4(), now, account_type="prepay", name=name,
                                      actor=actor, tax=TaxProfile("GB", vat[:32] or None))
        account.grant("g1", "bonus", 5_000_000, now, reason=reason, actor=actor,
                      expires_at=now + timedelta(days=1))
        account.record_usage([UsageLine("u1", "sms", 2, 39_500, "submitted", now,
                                        reference=reference or None)], now)
        account.adjust("a1", "debit", 10_000, f"memo: {memo} ......"[:500], f"A{actor}", now)
        account.change_settings(now, name=f"{name[:199]}!", actor=actor)
    except LedgerError:
        assume(False)
    app: Application[UUID] = Application()
    try:
        fast_mapper = FastMapper(transcoder=app.mapper.transcoder)
        for event in account.collect_events():
            assert fast_mapper.to_stored_event(event).state \
                == app.mapper.to_stored_event(event).state, type(event).__name__
    finally:
        app.close()
