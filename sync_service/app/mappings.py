"""Operator data: product -> item code, account code and tax type; VAT treatment -> tax type;
account -> connection. Read by the pusher at every push, so a change applies to the next one."""

from __future__ import annotations

from uuid import UUID

from psycopg_pool import AsyncConnectionPool

from sync_service.domain.errors import ConnectionNotFound, InvalidMapping
from sync_service.domain.xero_documents import ANY

VAT_TREATMENTS = frozenset({"standard", "zero_rated", "reverse_charge", "exempt",
                            "outside_scope"})


class MappingBook:
    def __init__(self, pool: AsyncConnectionPool) -> None:
        self._pool = pool

    async def set_product(self, *, product: str, connection_id: str = ANY,
                          item_code: str | None, account_code: str | None,
                          tax_type: str | None) -> None:
        if not (item_code or account_code or tax_type):
            raise InvalidMapping("a mapping sets at least one of item, account or tax type")
        async with self._pool.connection() as conn:
            await conn.execute(
                "INSERT INTO mappings (connection_id, product, item_code, account_code, tax_type)"
                " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (connection_id, product) DO UPDATE"
                " SET item_code = EXCLUDED.item_code, account_code = EXCLUDED.account_code,"
                " tax_type = EXCLUDED.tax_type",
                (connection_id, product, item_code, account_code, tax_type))

    async def set_tax_type(self, *, vat_treatment: str, tax_type: str, vat_rate: str = ANY,
                           connection_id: str = ANY) -> None:
        if vat_treatment not in VAT_TREATMENTS:
            raise InvalidMapping(f"unknown VAT treatment {vat_treatment}")
        async with self._pool.connection() as conn:
            await conn.execute(
                "INSERT INTO tax_mappings (connection_id, vat_treatment, vat_rate, tax_type)"
                " VALUES (%s, %s, %s, %s) ON CONFLICT (connection_id, vat_treatment, vat_rate)"
                " DO UPDATE SET tax_type = EXCLUDED.tax_type",
                (connection_id, vat_treatment, vat_rate, tax_type))

    async def assign_account(self, account_id: UUID, connection_id: str) -> None:
        async with self._pool.connection() as conn, conn.transaction():
            known = await (await conn.execute(
                "SELECT 1 FROM connections WHERE connection_id = %s", (connection_id,))
            ).fetchone()
            if known is None:
                raise ConnectionNotFound(connection_id)
            await conn.execute(
                "INSERT INTO account_connections (account_id, connection_id) VALUES (%s, %s)"
                " ON CONFLICT (account_id) DO UPDATE SET connection_id = EXCLUDED.connection_id",
                (account_id, connection_id))
            # Changes not yet pushed anywhere follow the account.
            await conn.execute(
                "UPDATE sync_jobs SET connection_id = %s WHERE account_id = %s"
                " AND status = 'pending' AND attempts = 0", (connection_id, account_id))

    async def set_default(self, connection_id: str) -> None:
        async with self._pool.connection() as conn, conn.transaction():
            known = await (await conn.execute(
                "SELECT 1 FROM connections WHERE connection_id = %s AND status = 'active'",
                (connection_id,))).fetchone()
            if known is None:
                raise ConnectionNotFound(connection_id)
            await conn.execute("UPDATE connections SET is_default = false WHERE is_default")
            await conn.execute("UPDATE connections SET is_default = true"
                               " WHERE connection_id = %s", (connection_id,))

    async def link_company(self, account_id: UUID, company_id: str) -> None:
        """The account is this HubSpot company: its invoices are associated with it."""
        if not company_id.isdigit():
            raise InvalidMapping("a HubSpot company id is a number")
        async with self._pool.connection() as conn:
            await conn.execute(
                "INSERT INTO external_refs (connection_id, kind, our_id, external_id)"
                " VALUES ('hubspot', 'company', %s, %s) ON CONFLICT (connection_id, kind, our_id)"
                " DO UPDATE SET external_id = EXCLUDED.external_id",
                (str(account_id), company_id))
