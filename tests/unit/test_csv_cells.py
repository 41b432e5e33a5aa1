"""CSV cells are safe to open in a spreadsheet: OWASP's formula-injection rule, amounts exempt."""

from __future__ import annotations

import csv
import io
import uuid

import pytest

from ledger_service.cli.events import AuditRecord, _exporter
from ledger_service.csv_cells import spreadsheet_row, spreadsheet_safe


@pytest.mark.parametrize("text", ["=1+1", "+1+1", "-1+1", "@SUM(A1)", "\t=1", "\r=1",
                                  "-", "=", "--1", "-1.", "-.5", "- 1"])
def test_text_a_spreadsheet_would_run_gets_a_leading_quote(text: str) -> None:
    assert spreadsheet_safe(text) == "'" + text


@pytest.mark.parametrize("text", ["-12.50", "-1", "0.0395", "12", "campaign 42", "", " =1",
                                  "a=1", "'=1", "é=1"])
def test_numbers_and_harmless_text_are_left_alone(text: str) -> None:
    assert spreadsheet_safe(text) == text


def test_only_text_cells_are_looked_at() -> None:
    account = uuid.uuid4()
    assert spreadsheet_row([-5, None, account, "=x"]) == [-5, None, account, "'=x"]


def test_ledgerctl_export_csv_uses_the_same_rule() -> None:
    sink = io.StringIO()
    write = _exporter("csv", sink)
    write(AuditRecord(position=1, account_id=uuid.uuid4(), version=1, type="=cmd()",
                      recorded_at="2026-11-01T00:00:00.000000Z", previous_hash="-1+1",
                      hash="@x", data={"memo": "=1+1"}))
    row = next(iter(csv.DictReader(io.StringIO(sink.getvalue()))))
    assert (row["type"], row["previous_hash"], row["hash"]) == ("'=cmd()", "'-1+1", "'@x")
    assert row["data"] == '{"memo":"=1+1"}'  # a JSON object starts with "{": nothing to run
    assert row["position"] == "1"
