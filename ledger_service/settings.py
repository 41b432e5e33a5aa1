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
from typing import Annotated, Final, Self

import msgspec

from contracts.partitioning import PARTITIONS_DEFAULT, PARTITIONS_MAX
from ledger_service.anchors import public_key_of
from ledger_service.databases import DatabaseGroup, DatabaseMap, parse_database_map
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
    # As the service's: with LEDGER_DATABASES, verify, rebuild, status, ... go over every
    # database of the map (ledger_service/databases.py).
    partitions: Annotated[int, msgspec.Meta(ge=1, le=PARTITIONS_MAX)] = PARTITIONS_DEFAULT
    databases: str | None = None

    @property
    def anchor_path(self) -> Path:
        return Path(self.anchor_dir) if self.anchor_dir else Path(self.run_dir) / "anchors"

    def database_map(self) -> DatabaseMap | None:
        return parse_database_map(self.databases, self.partitions) if self.databases else None

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
    # LEDGER_DATABASES: `0-7=postgresql://.../a;8-15=postgresql://.../b`, the partitions each
    # database holds (ledger_service/databases.py); unset: all of them in DATABASE_URL.
    databases: str | None = None
    # LEDGER_DATABASE_GROUP: the group of the map this process serves (`1` or `g1`); unset:
    # the group whose database DATABASE_URL names. Only with LEDGER_DATABASES.
    database_group: str | None = None

    def database_map(self) -> DatabaseMap | None:
        return parse_database_map(self.databases, self.partitions) if self.databases else None

    def database_group_of(self, databases: DatabaseMap) -> DatabaseGroup:
        """The group this process serves: LEDGER_DATABASE_GROUP's, else DATABASE_URL's."""
        if self.database_group:
            return databases.named(self.database_group)
        group = databases.group_of_url(self.database_url)
        if group is None:
            raise SettingsError("DATABASE_URL is none of LEDGER_DATABASES' databases: set"
                                " LEDGER_DATABASE_GROUP, or DATABASE_URL to the URL of this"
                                " process's group")
        return group

    def resolved(self) -> Self:
        """With LEDGER_DATABASES: DATABASE_URL becomes the database of this process's group
        (so the pool, the migrations at start, the leases and the followers all use it), and
        ANCHOR_DIR a folder of the group's own (anchor positions are per database)."""
        databases = self.database_map()
        if databases is None:
            if self.database_group:
                raise SettingsError("LEDGER_DATABASE_GROUP needs LEDGER_DATABASES")
            return self
        group = self.database_group_of(databases)
        return msgspec.structs.replace(self, database_url=group.url,
                                       anchor_dir=str(Path(self.anchor_dir) / group.name))

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
