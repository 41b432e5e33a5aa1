"""`ledgerctl events` and `ledgerctl export`: the raw events as stored, with their place in the
log and their link in the hash chain, for an operator's screen or an auditor's file."""

from __future__ import annotations

import contextlib
import csv
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Final, TextIO
from uuid import UUID

import msgspec
import psycopg
import typer
from rich.table import Table

from contracts.money import format_micros
from ledger_service.cli.tools import (
    Failure,
    err,
    out,
    parse_account,
    parse_instant,
    run,
    tools,
)
from ledger_service.csv_cells import spreadsheet_row
from ledger_service.domain.chain import (
    GENESIS_HASH,
    event_payload,
    is_upcast_class,
    stored_payload,
)
from ledger_service.domain.naming import event_name
from ledger_service.domain.times import format_time
from ledger_service.projections.decoding import EventDecoder, StoredRow
from ledger_service.projections.eventlog import event_rows

commands = typer.Typer()


@dataclass(frozen=True, slots=True)
class AuditRecord:
    position: int
    account_id: UUID
    version: int
    type: str
    recorded_at: str
    previous_hash: str | None
    hash: str | None
    data: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"position": self.position, "account_id": str(self.account_id),
                "version": self.version, "type": self.type, "recorded_at": self.recorded_at,
                "previous_hash": self.previous_hash, "hash": self.hash, "data": self.data}


def audit_records(conn: psycopg.Connection[Any], decoder: EventDecoder,
                  account_id: UUID | None) -> Iterator[AuditRecord]:
    """Stored events with their place in the log and their link in the hash chain: one
    account in version order, or the whole log in log order."""
    last_hash: dict[UUID, str] = {}
    with conn.transaction():  # a server-side cursor lives in a transaction
        for row in event_rows(conn, account_id=account_id, order="log",
                              cursor_name="ledgerctl_events"):
            yield _audit_record(row, decoder, last_hash)


def _audit_record(row: StoredRow, decoder: EventDecoder,
                  last_hash: dict[UUID, str]) -> AuditRecord:
    event = decoder.decode(row)
    chain_hash = getattr(event, "chain_hash", None)
    previous = last_hash.get(row.originator_id)
    if previous is None and row.originator_version == 1 and chain_hash is not None:
        previous = GENESIS_HASH
    if chain_hash is not None:
        last_hash[row.originator_id] = chain_hash
    return AuditRecord(row.position, row.originator_id, row.originator_version,
                       event_name(type(event)), format_time(event.timestamp), previous, chain_hash,
                       # what the hash covers: an upcast event's payload as it was stored
                       stored_payload(row.state) if is_upcast_class(type(event))
                       else event_payload(event))


def summary_of(record: AuditRecord) -> str:
    data = record.data
    if record.type in ("UsageRecorded", "FeesCharged"):
        lines = data.get("lines", [])
        total = sum(line["amount_micros"] for line in lines)
        return f"{len(lines)} line(s), -{format_micros(total)}"
    if "amount_micros" in data:
        return format_micros(int(data["amount_micros"]))
    if record.type == "Opened":
        return f"{data.get('account_type')} {data.get('currency')}"
    return ""


@commands.command("events", epilog="Examples:\n\n  ledgerctl events 3f0c1c9e-6a4d-4a55-9f1e-0b9f5a3c2d11\n\n"
             "  ledgerctl events 3f0c1c9e-6a4d-4a55-9f1e-0b9f5a3c2d11 --json | jq .type")
def events_command(
    ctx: typer.Context,
    account: Annotated[str, typer.Argument(help="The account id (UUID)")],
    last: Annotated[int, typer.Option("--last", min=0,
                                      help="Show only the newest N events (0: all)")] = 0,
    as_json: Annotated[bool, typer.Option(
        "--json", help="JSON lines: one object per event, with its full data")] = False,
) -> None:
    """An account's raw events as stored, oldest first: log position, version, type, time,
    and the hash chain link (previous hash -> hash)."""

    def command() -> None:
        account_id = parse_account(account)
        t = tools(ctx).of_account(account_id)
        with t.connect() as conn:
            records = list(audit_records(conn, t.decoder, account_id))
        if not records:
            raise Failure(f"account {account_id} has no events")
        shown = records[-last:] if last else records
        if as_json:
            for record in shown:
                sys.stdout.write(_json.encode(record.to_dict()).decode() + "\n")
            return
        table = Table(title=f"Account {account_id}: {len(records)} events", title_justify="left")
        for column in ("position", "version", "type", "recorded at", "amount", "hash"):
            table.add_column(column)
        for r in shown:
            table.add_row(str(r.position), str(r.version), r.type, r.recorded_at, summary_of(r),
                          (r.hash or "-")[:16])
        out.print(table)

    run(command, ctx)


@commands.command("export", epilog="Examples:\n\n"
             "  ledgerctl export --account 3f0c1c9e-6a4d-4a55-9f1e-0b9f5a3c2d11 --format csv"
             " --output account.csv\n\n"
             "  ledgerctl export --from 2026-11-01T00:00:00Z --to 2026-12-01T00:00:00Z"
             " --format jsonl > november.jsonl")
def export_command(
    ctx: typer.Context,
    account: Annotated[str | None, typer.Option(
        "--account", help="Only this account (default: every account, in log order)")] = None,
    since: Annotated[str | None, typer.Option(
        "--from", help="Events recorded at or after this RFC 3339 time")] = None,
    until: Annotated[str | None, typer.Option(
        "--to", help="Events recorded before this RFC 3339 time")] = None,
    fmt: Annotated[str, typer.Option("--format", help="csv or jsonl")] = "jsonl",
    output: Annotated[Path | None, typer.Option(
        "--output", "-o", help="Write to this file (default: standard output)")] = None,
) -> None:
    """The raw events for auditors, with positions and hashes: position, account_id, version,
    type, recorded_at, previous_hash, hash and data (the hashed payload, as JSON). Streams: the
    log is never held in memory."""

    def command() -> None:
        if fmt not in ("csv", "jsonl"):
            raise Failure(f"--format must be csv or jsonl, got {fmt!r}")
        account_id = parse_account(account) if account else None
        start, end = parse_instant(since, "--from"), parse_instant(until, "--to")
        start_text = format_time(start) if start else None
        end_text = format_time(end) if end else None
        root = tools(ctx)
        # With LEDGER_DATABASES, one database after another (positions are each database's).
        targets = [root.of_account(account_id)] if account_id else root.each_database()
        written = 0
        with _open_output(output) as sink:
            writer = _exporter(fmt, sink)
            for t in targets:
                with t.connect() as conn:
                    for record in audit_records(conn, t.decoder, account_id):
                        if (start_text and record.recorded_at < start_text) or (
                                end_text and record.recorded_at >= end_text):
                            continue
                        writer(record)
                        written += 1
        err.print(f"Exported {written:,} events" + (f" to {output}" if output else "") + ".")

    run(command, ctx)


@contextlib.contextmanager
def _open_output(path: Path | None) -> Iterator[TextIO]:
    if path is None:
        yield sys.stdout
        sys.stdout.flush()
        return
    with path.open("w", newline="", encoding="utf-8") as handle:
        yield handle


EXPORT_COLUMNS: Final = ("position", "account_id", "version", "type", "recorded_at",
                         "previous_hash", "hash", "data")
_json = msgspec.json.Encoder(order="sorted")


def _exporter(fmt: str, sink: TextIO) -> Callable[[AuditRecord], None]:
    if fmt == "jsonl":
        def write_jsonl(record: AuditRecord) -> None:
            sink.write(_json.encode(record.to_dict()).decode() + "\n")
        return write_jsonl
    writer = csv.writer(sink, lineterminator="\n")
    writer.writerow(EXPORT_COLUMNS)

    def write_csv(record: AuditRecord) -> None:
        writer.writerow(spreadsheet_row((
            record.position, record.account_id, record.version, record.type, record.recorded_at,
            record.previous_hash or "", record.hash or "", _json.encode(record.data).decode())))
    return write_csv
