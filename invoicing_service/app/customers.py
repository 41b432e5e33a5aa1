"""What invoicing keeps of the ledger (accounts, rated usage: from ledger.v1.events.*, never
the ledger's tables) and what it holds itself (billing profiles).

Every message is applied idempotently: a usage line by its entry id, an account's settings
only when newer than the stored version; so redelivery and reordering are harmless.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Literal
from uuid import UUID

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from contracts.invoicing import CustomerUpdated
from contracts.ledger import AccountUpdated, EntryPosted
from contracts.money import to_micros
from contracts.subjects import INVOICING_CUSTOMER_UPDATED
from invoicing_service.domain.vat import Exemption, TaxProfile
from services.outbox import enqueue

READER_ROLE: Final = "invoicing_reader"
TENANT_SETTING: Final = "invoicing.tenant_id"
NET_TERMS_DAYS_DEFAULT: Final = 30
OUTBOX_CHANNEL: Final = "invoicing_outbox"  # the relay LISTENs here


def period_of(at: datetime) -> str:
    """The billing period of a moment: its calendar month in UTC."""
    utc = at.astimezone(UTC)
    return f"{utc.year:04d}-{utc.month:02d}"


@dataclass(frozen=True, slots=True)
class Account:
    account_id: UUID
    account_type: str
    currency: str
    country: str
    vat_number: str | None
    closed: bool
    name: str | None


@dataclass(frozen=True, slots=True)
class BillingProfile:
    legal_name: str
    address_lines: list[str]
    country: str | None = None
    billing_email: str | None = None
    po_number: str | None = None
    net_terms_days: int = NET_TERMS_DAYS_DEFAULT
    vat_exemption: Exemption | None = None


@dataclass(frozen=True, slots=True)
class Customer:
    """An account with its billing profile (the defaults when none is stored)."""

    account: Account
    profile: BillingProfile | None

    @property
    def net_terms_days(self) -> int:
        return self.profile.net_terms_days if self.profile else NET_TERMS_DAYS_DEFAULT

    @property
    def tax(self) -> TaxProfile:
        return TaxProfile(country=self.account.country, vat_number=self.account.vat_number,
                          exemption=self.profile.vat_exemption if self.profile else None)


EntryOutcome = Literal["recorded", "duplicate", "ignored"]


class Customers:
    def __init__(self, pool: AsyncConnectionPool) -> None:
        self.pool = pool

    # ------------------------------------------------------------- from the ledger

    async def apply_account(self, message: AccountUpdated) -> bool:
        """Store the account's settings unless a newer version is already stored."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "INSERT INTO accounts (account_id, version, account_type, currency, country,"
                " vat_number, reverse_charge, closed, name, updated_at)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
                " ON CONFLICT (account_id) DO UPDATE SET version = EXCLUDED.version,"
                " account_type = EXCLUDED.account_type, currency = EXCLUDED.currency,"
                " country = EXCLUDED.country, vat_number = EXCLUDED.vat_number,"
                " reverse_charge = EXCLUDED.reverse_charge, closed = EXCLUDED.closed,"
                " name = EXCLUDED.name, updated_at = EXCLUDED.updated_at"
                " WHERE accounts.version < EXCLUDED.version",
                (message.account_id, message.version, message.account_type, message.currency,
                 message.tax.country, message.tax.vat_number, message.tax.reverse_charge,
                 message.closed, message.name, message.occurred_at),
            )
            return cur.rowcount == 1

    async def apply_entry(self, message: EntryPosted) -> EntryOutcome:
        """Keep a usage debit, or a recurring fee the ledger charged, as a rated line; other
        entries are not invoiced here."""
        if message.kind not in ("usage", "fee") or message.product is None \
                or message.quantity is None or message.unit_price is None:
            return "ignored"
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "INSERT INTO usage_lines (entry_id, account_id, currency, product, quantity,"
                " unit_price_micros, amount_micros, occurred_at, period, kind, reference)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
                " ON CONFLICT (entry_id) DO NOTHING",
                (message.entry_id, message.account_id, message.currency, message.product,
                 message.quantity, to_micros(message.unit_price), -to_micros(message.amount),
                 message.occurred_at, period_of(message.occurred_at), message.kind,
                 message.reference if message.kind == "fee" else None),
            )
            return "recorded" if cur.rowcount == 1 else "duplicate"

    # ------------------------------------------------------------ billing profiles

    async def set_profile(self, account_id: UUID, profile: BillingProfile) -> int:
        """Store the profile; a change (not a repeat of the same content) takes the next
        version and is announced as invoicing.v1.customer_updated in the same transaction.
        Returns the profile's version."""
        fields = (profile.legal_name, list(profile.address_lines), profile.country,
                  profile.billing_email, profile.po_number, profile.net_terms_days,
                  profile.vat_exemption)
        async with self.pool.connection() as conn, conn.transaction():
            current = await (await conn.execute(
                "SELECT legal_name, address_lines, country, billing_email, po_number,"
                " net_terms_days, vat_exemption, version FROM billing_profiles"
                " WHERE account_id = %s FOR UPDATE", (account_id,))).fetchone()
            if current is not None and tuple(current[:7]) == fields:
                return int(current[7])
            row = await (await conn.execute(
                "INSERT INTO billing_profiles (account_id, legal_name, address_lines, country,"
                " billing_email, po_number, net_terms_days, vat_exemption, updated_at, version)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, now(), 1)"
                " ON CONFLICT (account_id) DO UPDATE SET legal_name = EXCLUDED.legal_name,"
                " address_lines = EXCLUDED.address_lines, country = EXCLUDED.country,"
                " billing_email = EXCLUDED.billing_email, po_number = EXCLUDED.po_number,"
                " net_terms_days = EXCLUDED.net_terms_days,"
                " vat_exemption = EXCLUDED.vat_exemption, updated_at = now(),"
                " version = billing_profiles.version + 1"
                " RETURNING version, updated_at",
                (account_id, *fields))).fetchone()
            assert row is not None
            version, updated_at = int(row[0]), row[1]
            account = await (await conn.execute(
                "SELECT country, vat_number FROM accounts WHERE account_id = %s",
                (account_id,))).fetchone()
            message = CustomerUpdated(
                event_id=f"customer_updated:{account_id}:{version}", account_id=account_id,
                version=version, legal_name=profile.legal_name,
                address_lines=list(profile.address_lines),
                country=profile.country or (account[0] if account else None),
                billing_email=profile.billing_email,
                vat_number=account[1] if account else None, updated_at=updated_at)
            await enqueue(conn, INVOICING_CUSTOMER_UPDATED, message, channel=OUTBOX_CHANNEL)
        return version

    async def profile(self, account_id: UUID, tenant_id: UUID | None = None) -> BillingProfile | None:
        """The stored profile; with `tenant_id`, read under that tenant's row-level security."""
        async with tenant_scope(self.pool, tenant_id) as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(
                "SELECT legal_name, address_lines, country, billing_email, po_number,"
                " net_terms_days, vat_exemption FROM billing_profiles WHERE account_id = %s",
                (account_id,))
            row = await cur.fetchone()
        return None if row is None else BillingProfile(**row)

    async def customers(self, account_ids: list[UUID]) -> dict[UUID, Customer]:
        """Accounts with their billing profiles, in one query (a billing run's page)."""
        async with self.pool.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(
                "SELECT a.account_id, a.account_type, a.currency, a.country, a.vat_number,"
                " a.closed, a.name, p.legal_name, p.address_lines, p.country AS profile_country,"
                " p.billing_email, p.po_number, p.net_terms_days, p.vat_exemption"
                " FROM accounts a LEFT JOIN billing_profiles p USING (account_id)"
                " WHERE a.account_id = ANY(%s)", (account_ids,))
            rows = await cur.fetchall()
        found = {}
        for row in rows:
            profile = None if row["legal_name"] is None else BillingProfile(
                legal_name=row["legal_name"], address_lines=row["address_lines"],
                country=row["profile_country"], billing_email=row["billing_email"],
                po_number=row["po_number"], net_terms_days=row["net_terms_days"],
                vat_exemption=row["vat_exemption"])
            found[row["account_id"]] = Customer(account=Account(
                account_id=row["account_id"], account_type=row["account_type"],
                currency=row["currency"], country=row["country"], vat_number=row["vat_number"],
                closed=row["closed"], name=row["name"]), profile=profile)
        return found

    async def customer(self, account_id: UUID) -> Customer | None:
        async with self.pool.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(
                "SELECT account_id, account_type, currency, country, vat_number, closed, name"
                " FROM accounts WHERE account_id = %s", (account_id,))
            row = await cur.fetchone()
        if row is None:
            return None
        return Customer(account=Account(**row), profile=await self.profile(account_id))


@asynccontextmanager
async def tenant_scope(pool: AsyncConnectionPool,
                       tenant_id: UUID | None) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    """A transaction whose reads are limited to one tenant by row-level security (as
    invoicing_reader, SET LOCAL); None: the service's own role, every row (operators)."""
    async with pool.connection() as conn, conn.transaction():
        if tenant_id is not None:
            await conn.execute("SELECT set_config('role', %s, true), set_config(%s, %s, true)",
                               (READER_ROLE, TENANT_SETTING, str(tenant_id)))
        yield conn
