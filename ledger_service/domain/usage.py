"""Rating one intake batch of usage lines against one account's state.

The batch evolves working copies (balance, grant remainders through a Spender, holds used)
line by line, so each stored line carries its own consumption, postings and balance after;
the account changes only when the UsageRecorded event carrying the stored lines is applied.

Per line, by status and the account's billing basis:
- the basis status bills unit_price * quantity, capturing the line's hold if it is open (the
  hold is released and the actual amount debited), else billing without one even past the
  floor (the message was sent);
- `failed` releases the line's open hold and bills nothing;
- any other status, a status the basis does not bill, or a hold already captured records
  nothing for the line ("ignored");
- a line the model cannot read is "rejected" (the app dead-letters it) and the rest of the
  batch still applies.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, cast
from uuid import UUID

from contracts.ids import KEY_LENGTH_MAX
from contracts.money import AMOUNT_MICROS_MAX
from ledger_service.domain.checks import PRODUCT_LENGTH_MAX, REFERENCE_LENGTH_MAX, is_int, is_key
from ledger_service.domain.grants import GrantState, Spender, spendable_for
from ledger_service.domain.payloads import (
    Currency,
    GrantUse,
    HoldOutcome,
    UsageLineRecord,
    UsageStatus,
)
from ledger_service.domain.postings import (
    REVENUE_USAGE,
    customer_available,
    customer_held,
    postings_of,
    usage_entry_id,
)
from ledger_service.domain.times import format_time
from ledger_service.domain.values import USAGE_STATUSES, LineOutcome, UsageLine


class UsageBatch:
    def __init__(
        self,
        account_id: UUID,
        account_type: str,
        billing_basis: str,
        currency: Currency,
        balance_micros: int,
        grants: Mapping[str, GrantState],
        holds: Mapping[str, Mapping[str, Any]],
        captured_holds: Mapping[str, int],
    ) -> None:
        self.account_id = account_id
        self.basis = billing_basis
        self.is_system = account_type == "system"
        self.currency = currency
        self.balance_micros = balance_micros
        self.holds = holds
        self.captured_holds = captured_holds
        self.spender = Spender(grants, spendable_for(account_type))
        self.available_account = customer_available(account_id)
        self.held_account = customer_held(account_id)
        self.seen: set[str] = set()
        self.holds_used: set[str] = set()
        self.captured_now: set[str] = set()
        self.stored_lines: list[UsageLineRecord] = []

    def add(self, line: UsageLine) -> LineOutcome:
        problem = _problem(line)
        event_id = getattr(line, "event_id", "")
        event_id = event_id if is_key(event_id) else ""
        entry_id = usage_entry_id(self.account_id, event_id) if event_id else ""
        if problem is not None:
            return LineOutcome(event_id, entry_id, "rejected", problem)
        if event_id in self.seen:
            return LineOutcome(event_id, entry_id, "ignored", "duplicate_in_batch")
        self.seen.add(event_id)
        hold_id = line.hold_id
        hold = None
        if hold_id is not None and hold_id not in self.holds_used:
            hold = self.holds.get(hold_id)
        captured = hold_id is not None and (
            hold_id in self.captured_holds or hold_id in self.captured_now)
        if line.status not in USAGE_STATUSES:
            return LineOutcome(event_id, entry_id, "ignored", "status_not_billable")
        if line.status == "failed":
            if hold is not None:
                return self._release(line, entry_id, hold, "failed")
            reason = "hold_already_captured" if captured else "failed_not_billed"
            return LineOutcome(event_id, entry_id, "ignored", reason)
        if line.status != self.basis:
            return LineOutcome(event_id, entry_id, "ignored", "not_billable_on_basis")
        if captured:
            return LineOutcome(event_id, entry_id, "ignored", "hold_already_captured")
        if self.is_system:
            if hold is not None:
                return self._release(line, entry_id, hold, "system_account")
            return LineOutcome(event_id, entry_id, "ignored", "system_account")
        return self._bill(line, entry_id, hold)

    def _store(self, line: UsageLine, entry_id: str, amount_micros: int, held_micros: int,
               hold_outcome: HoldOutcome | None, consumed: list[GrantUse], overdraft: int,
               legs: list[tuple[str, int]]) -> None:
        self.stored_lines.append({
            "event_id": line.event_id, "entry_id": entry_id, "product": line.product,
            "quantity": line.quantity, "unit_price_micros": line.unit_price_micros,
            # the status was checked against USAGE_STATUSES before a line is stored
            "amount_micros": amount_micros, "status": cast(UsageStatus, line.status),
            "hold_id": line.hold_id,
            "hold_outcome": hold_outcome, "held_micros": held_micros,
            "reference": line.reference, "occurred_at": format_time(line.occurred_at),
            "grants_consumed": consumed, "overdraft_micros": overdraft,
            "balance_after_micros": self.balance_micros,
            "postings": postings_of(legs, self.currency),
        })

    def _release(self, line: UsageLine, entry_id: str, hold: Mapping[str, Any],
                 reason: str) -> LineOutcome:
        held = hold["amount_micros"]
        self.holds_used.add(cast(str, line.hold_id))
        self._store(line, entry_id, 0, held, "released", [], 0,
                    [(self.held_account, -held), (self.available_account, held)])
        return LineOutcome(line.event_id, entry_id, "released", reason)

    def _bill(self, line: UsageLine, entry_id: str,
              hold: Mapping[str, Any] | None) -> LineOutcome:
        amount = line.quantity * line.unit_price_micros
        held = 0
        reason = None
        if hold is not None:
            held = hold["amount_micros"]
            self.holds_used.add(cast(str, line.hold_id))
            self.captured_now.add(cast(str, line.hold_id))
            reason = "captured_hold"
        elif line.hold_id is not None:
            reason = "hold_not_open"
        consumed, overdraft = self.spender.take(amount)
        self.balance_micros -= amount
        self._store(line, entry_id, amount, held, "captured" if hold is not None else None,
                    consumed, overdraft,
                    [(self.held_account, -held), (self.available_account, held - amount),
                     (REVENUE_USAGE, amount)])
        return LineOutcome(line.event_id, entry_id, "billed", reason, amount, overdraft)


def _problem(line: UsageLine) -> str | None:
    """Why the model cannot read a line, or None."""
    if not isinstance(line, UsageLine) or not is_key(line.event_id):
        return "invalid_event_id"
    if not isinstance(line.product, str) or not 0 < len(line.product) <= PRODUCT_LENGTH_MAX:
        return "invalid_product"
    if not is_int(line.quantity) or line.quantity <= 0:
        return "invalid_quantity"
    if not is_int(line.unit_price_micros) or line.unit_price_micros < 0:
        return "invalid_price"
    if line.quantity * line.unit_price_micros > AMOUNT_MICROS_MAX:
        return "amount_too_large"
    if not isinstance(line.status, str) or len(line.status) > KEY_LENGTH_MAX:
        return "invalid_status"
    if not isinstance(line.occurred_at, datetime) or line.occurred_at.utcoffset() is None:
        return "invalid_occurred_at"
    if line.hold_id is not None and not is_key(line.hold_id):
        return "invalid_hold_id"
    if line.reference is not None and (not isinstance(line.reference, str)
                                       or len(line.reference) > REFERENCE_LENGTH_MAX):
        return "invalid_reference"
    return None
