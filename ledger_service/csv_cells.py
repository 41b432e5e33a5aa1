"""CSV cells a spreadsheet will not run: formula injection neutralised (OWASP's rule).

A statement or an export is opened in Excel, LibreOffice or Google Sheets far more often than
it is parsed. A cell that starts with `=`, `+`, `-` or `@` (or with a tab or a carriage
return, which some spreadsheets skip before looking) is read as a formula, and text in the
ledger comes from outside: a usage `reference`, a credit `reason`, an adjustment `memo`. Such
a cell gets a leading `'`, which spreadsheets show as nothing and read as "this is text".

Amounts are numbers, not text: a cell that is a plain decimal number (`-12.50`, `0.0395`) is
left as it is, whatever its column, so negative amounts stay negative numbers for the reader.
Nothing a plain number can say is a formula. Only `str` cells are looked at: ints, UUIDs and
the like cannot start with a trigger.

Used by `GET /v1/accounts/{id}/entries` with `Accept: text/csv` and `ledgerctl export
--format csv`: one rule for every CSV the ledger writes.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any, Final

FORMULA_TRIGGERS: Final = ("=", "+", "-", "@", "\t", "\r")
_PLAIN_NUMBER: Final = re.compile(r"-?[0-9]+(\.[0-9]+)?")


def spreadsheet_safe(cell: Any) -> Any:
    """``cell``, or ``'`` + ``cell`` when a spreadsheet would read it as a formula."""
    if (isinstance(cell, str) and cell.startswith(FORMULA_TRIGGERS)
            and not _PLAIN_NUMBER.fullmatch(cell)):
        return "'" + cell
    return cell


def spreadsheet_row(cells: Iterable[Any]) -> list[Any]:
    """A row for ``csv.writer.writerow`` with every cell made spreadsheet-safe."""
    return [spreadsheet_safe(cell) for cell in cells]
