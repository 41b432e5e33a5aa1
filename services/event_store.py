"""eventsourcing's PostgreSQL persistence, connecting with every libpq parameter of
DATABASE_URL.

The library's factory builds its pool from five settings (POSTGRES_HOST, _PORT, _USER,
_PASSWORD, _DBNAME), so a URL's ``sslmode=verify-full``, ``sslrootcert``,
``target_session_attrs`` or ``options`` would not reach the event store's connections. This
factory gives the pool the whole connection string (POSTGRES_CONNINFO, which
`services.database.eventsourcing_env` sets); the library's own keyword settings still apply
on top of it, and they are the same values.
"""

from __future__ import annotations

from typing import Any

from eventsourcing import postgres

from services.database import may_create_in

CONNINFO: str = "POSTGRES_CONNINFO"


class PostgresFactory(postgres.PostgresFactory):
    def __init__(self, env: Any) -> None:
        super().__init__(env)
        full = self.env.get(CONNINFO)
        if full:
            # psycopg_pool merges its conninfo with its keyword arguments at each connect
            self.datastore.pool.conninfo = full

    def env_create_table(self) -> bool:
        """CREATE_TABLE, unless the role connected cannot create in the schema: then the
        tables are the owner's, made at `migrate` (a least-privilege runtime role, see
        docs/operations.md), and trying would only be refused."""
        if not super().env_create_table():
            return False
        if self._may_create is None:
            self._may_create = self._role_may_create()
        return self._may_create

    _may_create: bool | None = None

    def _role_may_create(self) -> bool:
        with self.datastore.get_connection() as conn:
            return may_create_in(conn, self.datastore.schema)
