"""Refunds as a cumulative total, so that duplicates and reordering cannot double-count.

Stripe tells us about refunds twice and in any order: `charge.refunded` carries the charge's
cumulative `amount_refunded`, and `refund.*` carry each refund object. Both are lower bounds
of the same truth, so the refunded total is the greater of the largest cumulative seen and
the sum of the refund objects that take money back; it only ever grows. What is sent on is
the difference from what was already recorded.

A refund is of the gross amount the customer paid; the account loses the net part and the
VAT part goes back with it, in proportion. The split is computed on the cumulative total,
not on each delta, so that the parts always add up to exactly what was charged.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RefundSplit:
    """One step of a payment's refunded total, in minor units."""

    refunded_total_minor: int  # the new cumulative gross
    gross_minor: int
    net_minor: int
    vat_minor: int


def refunded_total(cumulative_seen_minor: int, refund_objects_minor: int, paid_minor: int) -> int:
    """What has been refunded of a payment, never more than was paid."""
    return min(max(cumulative_seen_minor, refund_objects_minor), paid_minor)


def vat_share(gross_minor: int, vat_minor: int, total_minor: int) -> int:
    """The VAT within `gross_minor` of a payment of `total_minor`, half away from zero."""
    assert 0 <= gross_minor <= total_minor and total_minor > 0
    return (2 * gross_minor * vat_minor + total_minor) // (2 * total_minor)


def next_refund(
    *, already_refunded_minor: int, new_total_minor: int, total_minor: int, vat_minor: int
) -> RefundSplit | None:
    """The refund to record when the refunded total moved from `already` to `new`; None
    when it did not grow (a duplicate, a late or a lower cumulative)."""
    if new_total_minor <= already_refunded_minor:
        return None
    vat_before = vat_share(already_refunded_minor, vat_minor, total_minor)
    vat_after = vat_share(new_total_minor, vat_minor, total_minor)
    gross = new_total_minor - already_refunded_minor
    return RefundSplit(
        refunded_total_minor=new_total_minor,
        gross_minor=gross,
        net_minor=gross - (vat_after - vat_before),
        vat_minor=vat_after - vat_before,
    )
