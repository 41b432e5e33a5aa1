"""`ledgerctl dead-letters`: the messages a consumer could not process (stream DEADLETTER,
subjects deadletter.v1.>), listed, shown and re-driven."""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Final

import msgspec
import typer
from rich.markup import escape
from rich.table import Table

from contracts.deadletter import DeadLetter
from contracts.subjects import DEADLETTERS
from ledger_service.cli.tools import Failure, out, run, tools
from ledger_service.domain.times import format_time
from services.broker import nats_servers

DEADLETTER_STREAM: Final = "DEADLETTER"

commands = typer.Typer(
    help="The intake's dead letters (stream DEADLETTER, subjects deadletter.v1.>): messages a"
         " consumer could not process, kept with the reason.",
    no_args_is_help=True,
)


@dataclass(frozen=True, slots=True)
class StoredLetter:
    sequence: int  # in the DEADLETTER stream
    letter: DeadLetter


async def _letters(nats_url: str, subject: str | None, limit: int) -> list[StoredLetter]:
    import nats
    from nats.js.errors import NotFoundError

    nc = await nats.connect(nats_servers(nats_url), connect_timeout=5, max_reconnect_attempts=0)
    try:
        js = nc.jetstream()
        try:
            info = await js.stream_info(DEADLETTER_STREAM)
        except NotFoundError:
            return []
        found: list[StoredLetter] = []
        sequence = info.state.first_seq
        pattern = "deadletter.v1." + subject if subject else DEADLETTERS
        while True:
            try:
                msg = await js.get_msg(DEADLETTER_STREAM, seq=sequence, subject=pattern, next=True)
            except NotFoundError:
                break
            assert msg.seq is not None
            found.append(StoredLetter(msg.seq, _decode_letter(msg.data or b"", msg.subject)))
            sequence = msg.seq + 1
        return found[-limit:] if limit else found
    finally:
        await nc.close()


def _decode_letter(data: bytes, subject: str | None) -> DeadLetter:
    try:
        return msgspec.json.decode(data, type=DeadLetter)
    except msgspec.DecodeError as exc:
        return DeadLetter(dead_letter_id="dl-unreadable", subject=subject or "?",
                          reason="invalid_payload", detail=f"not a dead letter: {exc}",
                          payload=data.decode("utf-8", errors="replace")[:10_000],
                          received_at=datetime.now(UTC))


def _find(letters: list[StoredLetter], key: str) -> StoredLetter:
    for stored in letters:
        if key in (stored.letter.dead_letter_id, str(stored.sequence)):
            return stored
    raise Failure(f"no dead letter {key!r} (give its dead_letter_id or stream sequence)")


@commands.command("list", epilog="Examples:\n\n  ledgerctl dead-letters list\n\n"
                          "  ledgerctl dead-letters list --subject usage.v1.recorded --limit 20")
def dead_letters_list(
    ctx: typer.Context,
    subject: Annotated[str | None, typer.Option(
        "--subject", help="Only dead letters of this original subject")] = None,
    limit: Annotated[int, typer.Option("--limit", min=0, help="The newest N (0: all)")] = 100,
) -> None:
    """The dead letters, oldest first: sequence, id, original subject, reason, when, detail."""

    def command() -> None:
        letters = asyncio.run(_letters(tools(ctx).require_nats(), subject, limit))
        table = Table(title=f"{len(letters)} dead letters", title_justify="left")
        for column in ("seq", "dead_letter_id", "subject", "reason", "received at", "detail"):
            table.add_column(column, overflow="fold")
        for s in letters:
            table.add_row(str(s.sequence), s.letter.dead_letter_id, s.letter.subject,
                          s.letter.reason, format_time(s.letter.received_at),
                          # escaped: a detail or marker in brackets is text, not markup
                          escape(s.letter.detail[:120] + (" [payload truncated]"
                                                          if s.letter.payload_truncated else "")))
        out.print(table)

    run(command, ctx)


@commands.command("show", epilog="Example:\n\n  ledgerctl dead-letters show dl-3a1f...")
def dead_letters_show(
    ctx: typer.Context,
    key: Annotated[str, typer.Argument(help="dead_letter_id or stream sequence")],
) -> None:
    """One dead letter in full: the reason, the detail and the original payload."""

    def command() -> None:
        stored = _find(asyncio.run(_letters(tools(ctx).require_nats(), None, 0)), key)
        data = msgspec.to_builtins(stored.letter)
        with contextlib.suppress(ValueError):
            data["payload"] = json.loads(stored.letter.payload)
        out.print_json(data={"sequence": stored.sequence, **data})

    run(command, ctx)


@commands.command("retry", epilog="Examples:\n\n"
                          "  ledgerctl dead-letters retry dl-3a1f...\n\n"
                          "  ledgerctl dead-letters retry --all --subject usage.v1.recorded")
def dead_letters_retry(
    ctx: typer.Context,
    keys: Annotated[list[str] | None, typer.Argument(
        help="dead_letter_id(s) or stream sequence(s)", show_default=False)] = None,
    retry_all: Annotated[bool, typer.Option("--all", help="Every dead letter (of --subject)")] = False,
    subject: Annotated[str | None, typer.Option(
        "--subject", help="With --all: only this original subject")] = None,
    keep: Annotated[bool, typer.Option(
        "--keep", help="Keep the dead letter after republishing it")] = False,
) -> None:
    """Republish the original payload to the original subject, once the cause is fixed. The
    consumer applies it exactly once (its own keys, e.g. the usage event_id, still decide);
    Nats-Msg-Id is retry:<dead_letter_id>, so a double retry within the stream's duplicate
    window is dropped. A republished dead letter is removed unless --keep; if it fails again, a
    new dead letter records why."""

    def command() -> int:
        if not keys and not retry_all:
            raise Failure("name dead letters to retry, or pass --all")
        results = asyncio.run(_retry(tools(ctx).require_nats(), keys or [], retry_all, subject,
                                     keep))
        failed = 0
        for stored, outcome in results:
            out.print(f"{stored.letter.dead_letter_id} (seq {stored.sequence}) ->"
                      f" {stored.letter.subject}: {outcome}")
            failed += outcome.startswith("failed")
        if not results:
            out.print("No dead letters to retry.")
        return 1 if failed else 0

    run(command, ctx)


async def _retry(nats_url: str, keys: list[str], retry_all: bool, subject: str | None,
                 keep: bool) -> list[tuple[StoredLetter, str]]:
    import nats

    letters = await _letters(nats_url, subject, 0)
    chosen = letters if retry_all else [_find(letters, key) for key in keys]
    results: list[tuple[StoredLetter, str]] = []
    nc = await nats.connect(nats_servers(nats_url), connect_timeout=5, max_reconnect_attempts=0)
    try:
        js = nc.jetstream()
        for stored in chosen:
            letter = stored.letter
            if letter.payload_truncated:
                # Its payload is a cut copy: republishing it would be a different message.
                results.append((stored, f"failed: the payload was truncated (original"
                                        f" {letter.payload_bytes} bytes, sha256"
                                        f" {letter.payload_sha256}); re-send it from its"
                                        " producer"))
                continue
            try:
                ack = await js.publish(letter.subject, letter.payload.encode(),
                                       headers={"Nats-Msg-Id": f"retry:{letter.dead_letter_id}"})
            except Exception as exc:
                results.append((stored, f"failed: {type(exc).__name__}: {exc}"))
                continue
            outcome = "already republished recently (duplicate dropped)" if ack.duplicate \
                else f"republished as {ack.stream} seq {ack.seq}"
            if not keep:
                await js.delete_msg(DEADLETTER_STREAM, stored.sequence)
                outcome += "; dead letter removed"
            results.append((stored, outcome))
    finally:
        await nc.close()
    return results
