"""Settings of the ledger service: the kernel's, plus the keys of its tamper evidence.

`chain_keys` key the per-account hash chain (HMAC-SHA256; ledger_service/domain/chain.py);
`anchor_signing_key` signs the checkpoints that anchor the log outside the database
(Ed25519; ledger_service/anchors.py). Both have development defaults so a fresh checkout runs
with no configuration; with APP_ENV=production the service refuses to start while either is
missing or still the development value. Neither ever reaches a log line.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Annotated, Final

import msgspec

from contracts.partitioning import PARTITIONS_DEFAULT, PARTITIONS_MAX
from ledger_service.anchors import public_key_of
from ledger_service.domain.chain import ChainKeyError, ChainKeyring
from ledger_service.lag import LAG_ALERT_S_DEFAULT
from services.settings import ServiceSettings, SettingsError, ToolSettings

# Development only (documented in docs/design.md, "Tamper evidence"); refused in production.
DEVELOPMENT_CHAIN_KEYS: Final = "dev=" + base64.b64encode(b"dev-only-insecure-chain-key-0123").decode()
DEVELOPMENT_ANCHOR_SIGNING_KEY: Final = base64.b64encode(b"dev-only-insecure-anchor-seed-01").decode()


def parse_keyring(text: str) -> ChainKeyring:
    try:
        return ChainKeyring.parse(text)
    except ChainKeyError as exc:
        raise SettingsError(f"CHAIN_KEYS (or LEDGER_CHAIN_KEYS): {exc}") from None


def parse_seed(text: str, name: str = "ANCHOR_SIGNING_KEY") -> bytes:
    try:
        seed = base64.b64decode(text, validate=True)
    except ValueError:
        raise SettingsError(f"{name} must be base64") from None
    if len(seed) != 32:
        raise SettingsError(f"{name} must be 32 bytes (an Ed25519 key), base64")
    return seed


class LedgerToolSettings(ToolSettings, frozen=True, kw_only=True):
    """ledgerctl's: the servers, plus the keys `verify` checks the chain and anchors with.

    The trusted anchor key is ANCHOR_PUBLIC_KEY when set (an auditor needs only that), else the
    public half of ANCHOR_SIGNING_KEY; both default to the development keys, as the service.
    """

    chain_keys: str = DEVELOPMENT_CHAIN_KEYS
    anchor_signing_key: str = DEVELOPMENT_ANCHOR_SIGNING_KEY
    anchor_public_key: str | None = None
    anchor_dir: str | None = None  # default: RUN_DIR/anchors, where make run's ledger writes
    # The service's threshold (LAG_ALERT_S), so `ledgerctl status --json` says "stuck" of the
    # same followers as GET /v1/health/lag.
    lag_alert_s: Annotated[float, msgspec.Meta(gt=0, le=86_400)] = LAG_ALERT_S_DEFAULT

    @property
    def anchor_path(self) -> Path:
        return Path(self.anchor_dir) if self.anchor_dir else Path(self.run_dir) / "anchors"

    def keyring(self) -> ChainKeyring:
        return parse_keyring(self.chain_keys)

    def trusted_anchor_key(self) -> bytes:
        if self.anchor_public_key:
            return parse_seed(self.anchor_public_key, "ANCHOR_PUBLIC_KEY")
        return public_key_of(parse_seed(self.anchor_signing_key))


class LedgerSettings(ServiceSettings, frozen=True, kw_only=True):
    """Read from CHAIN_KEYS, ANCHOR_SIGNING_KEY, LAG_ALERT_S, ... (or LEDGER_<NAME>)."""

    # `kid=base64key,kid2=base64key`: the first keys new events, all verify (rotation).
    chain_keys: str = DEVELOPMENT_CHAIN_KEYS
    # A base64 Ed25519 private seed (32 bytes). The public key verifies anchors anywhere.
    anchor_signing_key: str = DEVELOPMENT_ANCHOR_SIGNING_KEY
    # A checkpoint at this interval (and at every calendar-month close), when the log moved.
    anchor_interval_s: Annotated[float, msgspec.Meta(ge=1, le=86_400)] = 600.0
    # Where each anchor is also appended as a line of JSON, for an operator to archive.
    anchor_dir: str = ".run/anchors"
    # GET /v1/health/lag answers 503 once a follower's oldest waiting event is this old.
    lag_alert_s: Annotated[float, msgspec.Meta(gt=0, le=86_400)] = LAG_ALERT_S_DEFAULT
    # LEDGER_PARTITIONS: the accounts are split into this many partitions, shared out among
    # the ledger processes on one database (docs/scaling.md). Fixed per deployment: every
    # process must use the same count, and changing it needs every process stopped and the
    # usage.v1.part.* backlog drained first.
    partitions: Annotated[int, msgspec.Meta(ge=1, le=PARTITIONS_MAX)] = PARTITIONS_DEFAULT
    # READER_PROCESSES: processes of their own for reads that load accounts from the store
    # (GET /v1/accounts/{id}, ?as_of=, a balance whose projection is behind), so they never
    # share the writer's interpreter (ledger_service/reader.py). 0: threads in this process.
    reader_processes: Annotated[int, msgspec.Meta(ge=0, le=8)] = 1

    def keyring(self) -> ChainKeyring:
        return parse_keyring(self.chain_keys)

    def anchor_seed(self) -> bytes:
        return parse_seed(self.anchor_signing_key)

    def require_production_secrets(self) -> None:
        super().require_production_secrets()
        self.keyring()
        self.anchor_seed()
        if not self.is_production:
            return
        if self.chain_keys == DEVELOPMENT_CHAIN_KEYS or self.keyring().key("dev") is not None:
            raise SettingsError("APP_ENV=production needs CHAIN_KEYS of its own; the development"
                                " key is refused")
        if self.anchor_signing_key == DEVELOPMENT_ANCHOR_SIGNING_KEY:
            raise SettingsError("APP_ENV=production needs an ANCHOR_SIGNING_KEY of its own; the"
                                " development key is refused")
