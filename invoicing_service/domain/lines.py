"""Invoice lines and their VAT: from what was used to what is printed.

A line bills usage of one product at one unit price (the price frozen in the ledger's debit)
for one period; usage that arrived after its period was invoiced is billed on a later
invoice as its own, labelled, correction line.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Final

from contracts.money import format_micros
from invoicing_service.domain.rounding import allocate, round_to_minor, vat_on
from invoicing_service.domain.vat import VatTerms

LINES_MAX: Final = 1_000


@dataclass(frozen=True, slots=True)
class Line:
    """One printed line: net rounded to minor units, VAT its share of its group's VAT."""

    description: str
    product: str | None
    quantity: int
    unit_price_micros: int
    net_micros: int
    vat_rate: str
    vat_treatment: str
    vat_micros: int
    period: str | None = None
    correction: bool = False


@dataclass(frozen=True, slots=True)
class VatGroup:
    """The VAT of a document summed per rate and treatment."""

    vat_rate: str
    vat_treatment: str
    net_micros: int
    vat_micros: int


@dataclass(frozen=True, slots=True)
class UsageTotal:
    """Usage of one product at one unit price in one period, as the ledger debited it."""

    product: str
    unit_price_micros: int
    period: str
    quantity: int
    amount_micros: int  # the exact sum of the ledger's debits, before rounding
    kind: str = "usage"  # or "fee": a recurring item's charge (one line per item)
    reference: str | None = None  # the fee's item: the number or keyword


@dataclass(frozen=True, slots=True)
class LineDraft:
    description: str
    product: str | None
    quantity: int
    unit_price_micros: int
    exact_net_micros: int
    period: str | None = None
    correction: bool = False


def usage_drafts(totals: Iterable[UsageTotal], invoice_period: str) -> list[LineDraft]:
    """A line per product, unit price and period; earlier periods are correction lines."""
    drafts = []
    for total in sorted(totals, key=lambda t: (t.period != invoice_period, t.period, t.product,
                                               t.unit_price_micros)):
        correction = total.period != invoice_period
        what = f"{total.product}: {total.quantity:,} x {format_micros(total.unit_price_micros)}"
        if total.kind == "fee":
            prorated = total.amount_micros != total.quantity * total.unit_price_micros
            what = (f"{total.product} {total.reference or ''}".rstrip() + f": {total.quantity:,}"
                    f" x {format_micros(total.unit_price_micros)}"
                    + (", prorated by days" if prorated else ""))
        description = (f"Correction: usage of {total.period} received after it was invoiced, {what}"
                       if correction else f"{what} ({total.period})")
        drafts.append(LineDraft(description=description, product=total.product,
                                quantity=total.quantity,
                                unit_price_micros=total.unit_price_micros,
                                exact_net_micros=total.amount_micros, period=total.period,
                                correction=correction))
    return drafts


def price(drafts: Sequence[LineDraft], terms: VatTerms) -> list[Line]:
    """Round each net, compute VAT per group on the rounded nets, share it over the lines."""
    nets = [round_to_minor(d.exact_net_micros) for d in drafts]
    group_vat = vat_on(sum(nets), terms.rate)
    shares = allocate(group_vat, nets)
    return [
        Line(description=d.description, product=d.product, quantity=d.quantity,
             unit_price_micros=d.unit_price_micros, net_micros=net, vat_rate=terms.rate,
             vat_treatment=terms.treatment, vat_micros=share, period=d.period,
             correction=d.correction)
        for d, net, share in zip(drafts, nets, shares, strict=True)
    ]


def breakdown(lines: Iterable[Line]) -> list[VatGroup]:
    groups: dict[tuple[str, str], tuple[int, int]] = {}
    for line in lines:
        key = (line.vat_rate, line.vat_treatment)
        net, vat = groups.get(key, (0, 0))
        groups[key] = (net + line.net_micros, vat + line.vat_micros)
    return [VatGroup(vat_rate=rate, vat_treatment=treatment, net_micros=net, vat_micros=vat)
            for (rate, treatment), (net, vat) in sorted(groups.items(),
                                                        key=lambda kv: (-Decimal(kv[0][0]),
                                                                        kv[0][1]))]


def credit_lines(invoice_lines: Sequence[Line], credited: Sequence[Line],
                 net_micros: int | None, reason: str) -> list[Line]:
    """Lines of a credit note: one per VAT group of the invoice, at the invoice's rate.

    `net_micros` None credits all that is left (VAT included, to the penny); otherwise the
    net is shared over the groups by what is left of each, and VAT is computed on each
    share, never beyond what is left of the group's VAT."""
    left = {(g.vat_rate, g.vat_treatment): g for g in _left(invoice_lines, credited)}
    keys = [k for k, g in left.items() if g.net_micros > 0 or g.vat_micros > 0]
    if net_micros is None:
        nets = [left[k].net_micros for k in keys]
        vats = [left[k].vat_micros for k in keys]
    else:
        nets = allocate(net_micros, [left[k].net_micros for k in keys])
        vats = [min(vat_on(net, k[0]), left[k].vat_micros) for k, net in zip(keys, nets, strict=True)]
    return [Line(description=f"Credit: {reason}", product=None, quantity=1,
                 unit_price_micros=net, net_micros=net, vat_rate=k[0], vat_treatment=k[1],
                 vat_micros=vat)
            for k, net, vat in zip(keys, nets, vats, strict=True) if net or vat]


def _left(invoice_lines: Sequence[Line], credited: Sequence[Line]) -> list[VatGroup]:
    spent = {(g.vat_rate, g.vat_treatment): g for g in breakdown(credited)}
    out = []
    for group in breakdown(invoice_lines):
        used = spent.get((group.vat_rate, group.vat_treatment))
        out.append(VatGroup(vat_rate=group.vat_rate, vat_treatment=group.vat_treatment,
                            net_micros=group.net_micros - (used.net_micros if used else 0),
                            vat_micros=group.vat_micros - (used.vat_micros if used else 0)))
    return out
