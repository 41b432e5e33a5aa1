"""Document numbers: `INV-YYYY-NNNNNN` and `CN-YYYY-NNNNNN`, one gap-free series per kind
and year. A number is claimed only when a document is issued, in the transaction that stores
the issue (app/recorder.py), so a failed issue leaves no gap."""

from __future__ import annotations

from datetime import datetime
from typing import Final, Literal

SeriesKind = Literal["INV", "CN"]
SEQUENCE_MAX: Final = 999_999


def series_of(kind: SeriesKind, at: datetime) -> str:
    return f"{kind}-{at.year:04d}"


def document_number(series: str, sequence: int) -> str:
    if not 1 <= sequence <= SEQUENCE_MAX:
        raise ValueError(f"series {series} is exhausted at {sequence}")
    return f"{series}-{sequence:06d}"


def sequence_of(number: str) -> tuple[str, int]:
    series, _, sequence = number.rpartition("-")
    return series, int(sequence)
