"""Invoice and credit-note PDFs with reportlab's platypus.

Same input, same bytes: the document is built with `invariant=1` (a fixed creation date and
document id), from a font that ships inside reportlab's own wheel (Bitstream Vera, which has
€, £ and the typographic dashes), and with no clock, locale or random input. A machine
without a font of its own renders byte-identical documents to one with many.

Text from the caller (descriptions, names, addresses) reaches the page only through
`_text`, which escapes it: platypus Paragraphs read `<` and `&` as markup.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from xml.sax.saxutils import escape

import reportlab
from reportlab import rl_config
from reportlab.lib import colors
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import ParagraphStyle
from reportlab.lib.units import mm
from reportlab.pdfbase import pdfmetrics
from reportlab.pdfbase.ttfonts import TTFError, TTFont
from reportlab.pdfgen.canvas import Canvas
from reportlab.platypus import Flowable, Paragraph, SimpleDocTemplate, Spacer, Table, TableStyle

from contracts.http.invoicing import CreditNoteView, InvoiceView
from contracts.invoicing import InvoiceLine, VatBreakdown
from invoicing_service.documents import wording
from invoicing_service.documents.party import Party, SterlingVat

PAGE_MARGIN: Final = 16 * mm
# Column widths of the lines table, in points; they add up to the printable width of A4.
_LINE_COLUMNS: Final = (62 * mm, 22 * mm, 25 * mm, 26 * mm, 19 * mm, 24 * mm)
_GRID: Final = colors.HexColor("#9a9a9a")
_SHADE: Final = colors.HexColor("#eeeeee")
_PADDING: Final = 6  # reportlab's default left and right cell padding, in points
_WIDE_FONT_FILES: Final = ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf")


@dataclass(frozen=True, slots=True)
class _Fonts:
    regular: str
    bold: str
    # The code points the font draws; None for Helvetica (WinAnsi: Latin-1, €, dashes).
    charset: frozenset[int] | None


def _register(name: str, regular: Path, bold: Path) -> _Fonts:
    face = TTFont(name, str(regular))
    pdfmetrics.registerFont(face)
    pdfmetrics.registerFont(TTFont(f"{name}-Bold", str(bold)))
    return _Fonts(name, f"{name}-Bold", frozenset(face.face.charToGlyph))


@functools.cache
def _bundled_fonts() -> _Fonts:
    """Bitstream Vera, inside reportlab's wheel: the same bytes on every machine, € and £
    and most of Latin Extended-A. Without it (a trimmed install), the PDF standard
    Helvetica."""
    folder = Path(reportlab.__file__).parent / "fonts"
    try:
        return _register("InvoiceSans", folder / "Vera.ttf", folder / "VeraBd.ttf")
    except (OSError, TTFError):
        return _Fonts("Helvetica", "Helvetica-Bold", None)


@functools.cache
def _wide_fonts() -> _Fonts | None:
    """DejaVu Sans where the system has it (reportlab's TTFSearchPath): Cyrillic, Greek,
    Hungarian and others that Vera lacks."""
    for folder in map(Path, rl_config.TTFSearchPath):
        regular, bold = (folder / name for name in _WIDE_FONT_FILES)
        if regular.is_file() and bold.is_file():
            with contextlib.suppress(OSError, TTFError):
                return _register("InvoiceSansWide", regular, bold)
    return None


def _fonts_for(texts: Iterable[str]) -> _Fonts:
    """Vera, unless the document holds characters Vera cannot draw and DejaVu can: then
    that document is in DejaVu (and its bytes depend on the system's DejaVu version)."""
    bundled = _bundled_fonts()
    if bundled.charset is None:
        return bundled
    missing = {ord(ch) for text in texts for ch in text} - bundled.charset
    if not missing:
        return bundled
    wide = _wide_fonts()
    if wide is not None and wide.charset is not None and missing <= wide.charset:
        return wide
    return bundled


@dataclass(frozen=True, slots=True)
class _Styles:
    fonts: _Fonts
    body: ParagraphStyle
    title: ParagraphStyle
    heading: ParagraphStyle
    note: ParagraphStyle


@functools.cache
def _styles(fonts: _Fonts) -> _Styles:
    body = ParagraphStyle("body", fontName=fonts.regular, fontSize=9, leading=11.5)
    return _Styles(
        fonts=fonts,
        body=body,
        title=ParagraphStyle("title", parent=body, fontName=fonts.bold, fontSize=18,
                             leading=22, spaceAfter=4),
        heading=ParagraphStyle("heading", parent=body, fontName=fonts.bold, fontSize=9.5,
                               leading=12, spaceBefore=6, spaceAfter=2),
        note=ParagraphStyle("note", parent=body, fontName=fonts.bold, fontSize=9.5, leading=12,
                            spaceBefore=2),
    )


def _text(value: str, style: ParagraphStyle) -> Paragraph:
    """Caller text as a paragraph, escaped: `<b>` in a description is printed, not obeyed."""
    return Paragraph(escape(value), style)


def _cell(value: str, width: float, style: ParagraphStyle) -> str | Paragraph:
    """A table cell: the plain string when it fits on one line (a table draws strings as they
    are, no markup, and four times faster than a paragraph), else an escaped paragraph that
    wraps. `width` is the column's, padding included."""
    if "\n" not in value and (
        pdfmetrics.stringWidth(value, style.fontName, style.fontSize) <= width - _PADDING * 2
    ):
        return value
    return _text(value, style)


def document_sha256(pdf: bytes) -> str:
    """The hash recorded when a document is issued (lower-case hex)."""
    return hashlib.sha256(pdf).hexdigest()


def render_invoice_pdf(view: InvoiceView, supplier: Party, customer: Party, *,
                       sterling_vat: SterlingVat | None = None) -> bytes:
    """`sterling_vat`: for an invoice in EUR or USD that charges VAT, its VAT in sterling."""
    issued = wording.utc_day(view.issued_at) if view.issued_at else None
    tax_point = wording.tax_point(view.period, issued)
    draft = view.number is None
    facts: list[tuple[str, str]] = [
        ("Invoice number", view.number or "Draft (no number until issued)"),
        ("Issue date", wording.long_date(issued) if issued else "Not issued"),
        ("Tax point", wording.long_date(tax_point) if tax_point else "Not issued"),
    ]
    if view.due_at is not None:
        facts.append(("Due date", wording.long_date(wording.utc_day(view.due_at))))
    if view.period is not None:
        facts.append(("Billing period", wording.period_label(view.period)))
    facts.append(("Currency", view.currency))
    if customer.po_number:
        facts.append(("Purchase order", customer.po_number))
    totals = [
        ("Total excluding VAT", view.subtotal),
        ("VAT", view.vat_total),
        ("Total", view.total),
        ("Amount paid", view.amount_paid),
        ("Amount due", view.amount_due),
    ]
    status_note = {"void": "VOID: this invoice was cancelled; nothing is owed on it.",
                   "paid": "Paid in full. Thank you."}.get(view.status)
    return _render(
        title="DRAFT invoice (not a VAT invoice)" if draft else "VAT invoice",
        reference=view.number or "DRAFT",
        facts=facts,
        supplier=supplier,
        customer=customer,
        lines=view.lines,
        breakdown=view.vat_breakdown,
        totals=totals,
        currency=view.currency,
        notes=[*wording.vat_notes((line.vat_treatment for line in view.lines), customer),
               *wording.sterling_notes(view.currency, view.vat_total, sterling_vat),
               *([status_note] if status_note else [])],
    )


def render_credit_note_pdf(
    view: CreditNoteView, invoice_number: str, supplier: Party, customer: Party, *,
    sterling_vat: SterlingVat | None = None,
) -> bytes:
    issued = wording.utc_day(view.issued_at)
    facts = [
        ("Credit note number", view.number),
        ("Credits invoice", invoice_number),
        ("Issue date", wording.long_date(issued)),
        ("Tax point", wording.long_date(issued)),
        ("Currency", view.currency),
        ("Reason", view.reason),
    ]
    if customer.po_number:
        facts.append(("Purchase order", customer.po_number))
    totals = [
        ("Credit excluding VAT", view.subtotal),
        ("VAT credited", view.vat_total),
        ("Total credited", view.total),
    ]
    return _render(
        title="Credit note",
        reference=view.number,
        facts=facts,
        supplier=supplier,
        customer=customer,
        lines=view.lines,
        breakdown=view.vat_breakdown,
        totals=totals,
        currency=view.currency,
        notes=[f"This credit note reduces the amount owed on invoice {invoice_number}.",
               *wording.vat_notes((line.vat_treatment for line in view.lines), customer),
               *wording.sterling_notes(view.currency, view.vat_total, sterling_vat)],
    )


def _render(
    *,
    title: str,
    reference: str,
    facts: Sequence[tuple[str, str]],
    supplier: Party,
    customer: Party,
    lines: Sequence[InvoiceLine],
    breakdown: Sequence[VatBreakdown],
    totals: Sequence[tuple[str, str]],
    currency: str,
    notes: Sequence[str],
) -> bytes:
    texts = [title, *(value for _label, value in facts), *notes,
             *(line.description for line in lines),
             *(text for party in (supplier, customer) for text in _party_lines(party))]
    styles = _styles(_fonts_for(texts))
    buffer = io.BytesIO()
    document = SimpleDocTemplate(
        buffer,
        pagesize=A4,
        leftMargin=PAGE_MARGIN, rightMargin=PAGE_MARGIN,
        topMargin=PAGE_MARGIN, bottomMargin=PAGE_MARGIN + 6 * mm,
        title=f"{title} {reference}",
        author=supplier.name,
        creator="invoicing_service",
        invariant=1,
    )
    story: list[Flowable] = [
        _text(title, styles.title),
        _facts_table(facts, styles),
        Spacer(1, 5 * mm),
        _parties_table(supplier, customer, styles),
        Spacer(1, 5 * mm),
        _lines_table(lines, currency, styles),
        Spacer(1, 4 * mm),
        _text("VAT summary", styles.heading),
        _breakdown_table(breakdown, currency, styles),
        Spacer(1, 3 * mm),
        _totals_table(totals, currency, styles),
        Spacer(1, 4 * mm),
        *(_text(note, styles.note) for note in notes),
    ]

    def footer(canvas: Canvas, doc: Any) -> None:
        canvas.saveState()
        canvas.setFont(styles.fonts.regular, 7.5)
        canvas.drawString(PAGE_MARGIN, PAGE_MARGIN / 2,
                          f"{supplier.name} · VAT {supplier.vat_number or 'not registered'}")
        canvas.drawRightString(A4[0] - PAGE_MARGIN, PAGE_MARGIN / 2,
                               f"{reference} · page {doc.page}")
        canvas.restoreState()

    document.build(story, onFirstPage=footer, onLaterPages=footer)
    return buffer.getvalue()


def _table(rows: list[list[Any]], widths: Sequence[float], commands: list[Any],
           styles: _Styles, *, repeat_rows: int = 0) -> Table:
    table = Table(rows, colWidths=list(widths), repeatRows=repeat_rows, hAlign="LEFT")
    table.setStyle(TableStyle([
        ("FONT", (0, 0), (-1, -1), styles.fonts.regular, 9),
        ("VALIGN", (0, 0), (-1, -1), "TOP"),
        ("TOPPADDING", (0, 0), (-1, -1), 2),
        ("BOTTOMPADDING", (0, 0), (-1, -1), 2),
        *commands,
    ]))
    return table


def _facts_table(facts: Sequence[tuple[str, str]], styles: _Styles) -> Table:
    rows = [[label, _cell(value, 120 * mm, styles.body)] for label, value in facts]
    return _table(rows, (40 * mm, 120 * mm), [("FONT", (0, 0), (0, -1), styles.fonts.bold, 9)],
                  styles)


def _party_lines(party: Party) -> list[str]:
    lines = [party.name, *party.address_lines, party.country]
    if party.vat_number:
        lines.append(f"VAT number: {party.vat_number}")
    if party.email:
        lines.append(party.email)
    return lines


def _party_cell(party: Party, width: float, styles: _Styles) -> str | Paragraph:
    lines = _party_lines(party)
    style = styles.body
    if all(pdfmetrics.stringWidth(line, style.fontName, style.fontSize) <= width - _PADDING * 2
           for line in lines):
        return "\n".join(lines)  # drawn line by line, as is
    return Paragraph("<br/>".join(escape(line) for line in lines), style)


def _parties_table(supplier: Party, customer: Party, styles: _Styles) -> Table:
    width = 89 * mm
    rows: list[list[Any]] = [
        ["From", "Bill to"],
        [_party_cell(supplier, width, styles), _party_cell(customer, width, styles)],
    ]
    return _table(rows, (width, width), [
        ("FONT", (0, 0), (-1, 0), styles.fonts.bold, 9.5),
        ("LEADING", (0, 1), (-1, -1), styles.body.leading),
    ], styles)


def _lines_table(lines: Sequence[InvoiceLine], currency: str, styles: _Styles) -> Table:
    header = ["Description", "Quantity", "Unit price", "Net", "VAT rate", "VAT"]
    rows: list[list[Any]] = [header]
    for line in lines:
        rows.append([
            _cell(line.description, _LINE_COLUMNS[0], styles.body),
            wording.quantity(line.quantity),
            wording.money(line.unit_price, currency),
            wording.money(line.net_amount, currency),
            wording.rate(line.vat_rate),
            wording.money(line.vat_amount, currency),
        ])
    return _table(rows, _LINE_COLUMNS, [
        ("FONT", (0, 0), (-1, 0), styles.fonts.bold, 9),
        ("BACKGROUND", (0, 0), (-1, 0), _SHADE),
        ("ALIGN", (1, 0), (-1, -1), "RIGHT"),
        ("LINEBELOW", (0, 0), (-1, -1), 0.25, _GRID),
    ], styles, repeat_rows=1)


def _breakdown_table(breakdown: Sequence[VatBreakdown], currency: str,
                     styles: _Styles) -> Table:
    rows: list[list[Any]] = [["VAT rate", "Treatment", "Net", "VAT"]]
    rows.extend(
        [wording.rate(part.vat_rate), wording.TREATMENT_LABELS[part.vat_treatment],
         wording.money(part.net_amount, currency), wording.money(part.vat_amount, currency)]
        for part in breakdown
    )
    return _table(rows, (22 * mm, 40 * mm, 34 * mm, 34 * mm), [
        ("FONT", (0, 0), (-1, 0), styles.fonts.bold, 9),
        ("BACKGROUND", (0, 0), (-1, 0), _SHADE),
        ("ALIGN", (2, 0), (-1, -1), "RIGHT"),
        ("LINEBELOW", (0, 0), (-1, -1), 0.25, _GRID),
    ], styles)


def _totals_table(totals: Sequence[tuple[str, str]], currency: str, styles: _Styles) -> Table:
    rows = [[label, wording.money(amount, currency)] for label, amount in totals]
    table = _table(rows, (50 * mm, 34 * mm), [
        ("FONT", (0, 0), (-1, -1), styles.fonts.bold, 9.5),
        ("ALIGN", (1, 0), (1, -1), "RIGHT"),
        ("LINEABOVE", (0, 0), (-1, 0), 0.5, _GRID),
    ], styles)
    table.hAlign = "RIGHT"
    return table
