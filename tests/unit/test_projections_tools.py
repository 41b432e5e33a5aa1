"""Small pieces of the read side and ledgerctl: cursors, freshness headers, settings."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

from ledger_service.cli import Failure, parse_instant
from ledger_service.projections.reads import BadCursor, Freshness, decode_cursor, encode_cursor
from services.embedded import embedded_database_url
from services.settings import load_tool_settings


@pytest.mark.parametrize("seq", [0, 1, 8191, 2**62])
def test_cursors_round_trip(seq: int) -> None:
    assert decode_cursor(encode_cursor(seq)) == seq


@pytest.mark.parametrize("cursor", ["", "abc", "ZTE6LTE", "ZTI6MTI", "%%%", "ZTE6eA"])
def test_a_cursor_we_did_not_issue_is_refused(cursor: str) -> None:
    with pytest.raises(BadCursor):
        decode_cursor(cursor)


def test_freshness_headers_name_both_positions_and_the_time() -> None:
    at = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
    assert Freshness(41, at, 42).headers() == {
        "X-Projection-Position": "41", "X-Log-Position": "42",
        "X-Projection-Updated-At": "2026-03-01T09:00:00+00:00"}
    assert Freshness(None, None, 0).headers() == {"X-Projection-Position": "0",
                                                  "X-Log-Position": "0"}


def test_tool_settings_prefer_the_ledger_prefixed_variable() -> None:
    settings = load_tool_settings("ledger_service", {
        "DATABASE_URL": "postgresql://a@h/x", "LEDGER_DATABASE_URL": "postgresql://b@h/y",
        "NATS_URL": "nats://n:4222"})
    assert settings.database_url == "postgresql://b@h/y"
    assert settings.nats_url == "nats://n:4222" and settings.run_dir == ".run"
    assert load_tool_settings("ledger_service", {}).database_url is None


def test_the_embedded_server_of_make_run_is_found_from_its_pid_file(tmp_path: Path) -> None:
    assert embedded_database_url(tmp_path) is None
    pgdata = tmp_path / "pgdata"
    pgdata.mkdir()
    (pgdata / "postmaster.pid").write_text(
        f"{os.getpid()}\n{pgdata}\n1700000000\n5432\n{pgdata}\n\n")
    assert embedded_database_url(tmp_path) == \
        f"postgresql://postgres@/billing?host={pgdata}&port=5432"
    (pgdata / "postmaster.pid").write_text(f"999999999\n{pgdata}\n1\n5432\n{pgdata}\n")
    assert embedded_database_url(tmp_path) is None  # a stale file of a stopped server


def test_instants_need_an_offset() -> None:
    assert parse_instant("2026-03-01T09:00:00Z", "--as-of") == datetime(2026, 3, 1, 9,
                                                                       tzinfo=UTC)
    assert parse_instant(None, "--as-of") is None
    for bad in ("2026-03-01T09:00:00", "yesterday"):
        with pytest.raises(Failure):
            parse_instant(bad, "--as-of")
