"""Schema migrations: applied once, atomically, and a newer database is refused."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from engine.repository import MIGRATIONS, RepositoryError, SchemaTooNew, migrate, open_repository
from engine.repository.schema import schema_version, split_statements

TABLES = {"events", "counters", "jobs", "attempts", "output", "agents"}


def connect(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path, isolation_level=None)


def tables(conn: sqlite3.Connection) -> set[str]:
    rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    return {name for (name,) in rows} - {"sqlite_sequence"}


async def test_open_creates_the_schema_at_the_current_version(repo_path: Path) -> None:
    """A new file gets every table and user_version == number of migrations."""
    async with open_repository(repo_path):
        pass
    conn = connect(repo_path)
    assert schema_version(conn) == len(MIGRATIONS)
    assert tables(conn) >= TABLES


async def test_reopening_applies_nothing_and_keeps_data(repo_path: Path) -> None:
    """Opening an up-to-date repository again changes neither the schema nor the data."""
    async with open_repository(repo_path) as repo:
        await repo.write(lambda tx: tx.emit("k", "s"))
    conn = connect(repo_path)
    schema = conn.execute("SELECT sql FROM sqlite_master ORDER BY name").fetchall()
    conn.close()
    async with open_repository(repo_path) as repo:
        assert len(await repo.events_since(0)) == 1
    conn = connect(repo_path)
    assert conn.execute("SELECT sql FROM sqlite_master ORDER BY name").fetchall() == schema
    assert schema_version(conn) == len(MIGRATIONS)


async def test_newer_database_is_refused(repo_path: Path) -> None:
    """A database from a newer wfe is refused with one line, and left untouched."""
    async with open_repository(repo_path):
        pass
    newer = len(MIGRATIONS) + 2
    conn = connect(repo_path)
    conn.execute(f"PRAGMA user_version = {newer}")
    conn.close()
    with pytest.raises(SchemaTooNew) as info:
        async with open_repository(repo_path):
            pass
    assert str(info.value) == (
        f"repository schema version {newer} is newer than this wfe ({len(MIGRATIONS)}): upgrade wfe"
    )
    assert schema_version(connect(repo_path)) == newer


def test_a_new_migration_is_applied_once(tmp_path: Path) -> None:
    """Appending a migration upgrades an existing database by exactly that migration."""
    conn = connect(tmp_path / "db")
    assert migrate(conn) == len(MIGRATIONS)
    extended = [*MIGRATIONS, "CREATE TABLE migration_test (id TEXT PRIMARY KEY);"]
    assert migrate(conn, extended) == len(MIGRATIONS) + 1
    assert migrate(conn, extended) == len(MIGRATIONS) + 1  # idempotent
    assert "migration_test" in tables(conn)


def test_a_failing_migration_changes_nothing(tmp_path: Path) -> None:
    """A migration that fails half-way is rolled back whole; the version stays where it was."""
    conn = connect(tmp_path / "db")
    migrate(conn)
    broken = [*MIGRATIONS, "CREATE TABLE half (x); CREATE TABLE jobs (x);"]
    with pytest.raises(RepositoryError, match=f"schema migration {len(broken)} failed: .*jobs"):
        migrate(conn, broken)
    assert "half" not in tables(conn)
    assert schema_version(conn) == len(MIGRATIONS)
    assert not conn.in_transaction


def test_split_statements_keeps_triggers_whole() -> None:
    """Scripts split on statement boundaries, not on every semicolon."""
    script = """
    CREATE TABLE a (x TEXT DEFAULT ';');
    CREATE TRIGGER t AFTER INSERT ON a BEGIN
      INSERT INTO a VALUES ('x'); DELETE FROM a WHERE x = ';';
    END;
    CREATE INDEX i ON a (x)
    """
    statements = split_statements(script)
    assert len(statements) == 3
    assert statements[1].startswith("CREATE TRIGGER") and statements[1].endswith("END;")
    assert statements[2] == "CREATE INDEX i ON a (x)"
