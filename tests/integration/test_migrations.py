from __future__ import annotations

import threading
import uuid
from pathlib import Path

import psycopg
import pytest

from services.database import MigrationError, apply_migrations, conninfo
from tests.conftest import Infra

pytestmark = pytest.mark.integration


def _folder(tmp_path: Path) -> Path:
    folder = tmp_path / "migrations"
    folder.mkdir()
    (folder / "0001_a.sql").write_text("CREATE TABLE a (id int PRIMARY KEY);")
    (folder / "0002_b.sql").write_text("CREATE TABLE b (id int PRIMARY KEY);")
    return folder


def test_migrations_apply_once_in_order_and_are_recorded(infra: Infra, tmp_path: Path) -> None:
    schema = f"m_{uuid.uuid4().hex[:8]}"
    folder = _folder(tmp_path)
    assert apply_migrations(infra.database_url, schema, folder) == ["0001_a.sql", "0002_b.sql"]
    assert apply_migrations(infra.database_url, schema, folder) == []
    with psycopg.connect(conninfo(infra.database_url)) as conn:
        tables = {r[0] for r in conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s", (schema,))}
    assert {"a", "b", "schema_migrations"} <= tables


def test_concurrent_starters_apply_each_migration_exactly_once(infra: Infra, tmp_path: Path) -> None:
    schema = f"m_{uuid.uuid4().hex[:8]}"
    folder = _folder(tmp_path)
    results: list[list[str]] = []
    threads = [
        threading.Thread(target=lambda: results.append(apply_migrations(infra.database_url, schema, folder)))
        for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(len(r) for r in results) == [0, 0, 0, 2]


def test_an_edited_applied_migration_stops_the_start(infra: Infra, tmp_path: Path) -> None:
    schema = f"m_{uuid.uuid4().hex[:8]}"
    folder = _folder(tmp_path)
    apply_migrations(infra.database_url, schema, folder)
    (folder / "0001_a.sql").write_text("CREATE TABLE a (id bigint PRIMARY KEY);")
    with pytest.raises(MigrationError, match="changed after it was applied"):
        apply_migrations(infra.database_url, schema, folder)


def test_a_failing_migration_applies_nothing(infra: Infra, tmp_path: Path) -> None:
    schema = f"m_{uuid.uuid4().hex[:8]}"
    folder = _folder(tmp_path)
    (folder / "0003_bad.sql").write_text("CREATE TABLE c (id int PRIMARY KEY); SELECT nonsense;")
    with pytest.raises(MigrationError, match=r"0003_bad\.sql"):
        apply_migrations(infra.database_url, schema, folder)
    with psycopg.connect(conninfo(infra.database_url)) as conn:
        count = conn.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = %s", (schema,)
        ).fetchone()
    assert count == (0,)
