"""Schema migrations: applied once, atomically, and a newer database is refused."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from wfe.engine.repository import (
    MIGRATIONS,
    RepositoryError,
    SchemaTooNew,
    Tx,
    migrate,
    open_repository,
)
from wfe.engine.repository.schema import schema_version, split_statements

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


async def test_events_from_before_the_autoincrement_migration_keep_their_ids(
    repo_path: Path,
) -> None:
    """Migration 4 rebuilds events without AUTOINCREMENT: every old event keeps its id and
    data, no sqlite_sequence row is kept for it, and new events go on from the last id."""
    conn = connect(repo_path)
    migrate(conn, MIGRATIONS[:3])
    conn.executemany(
        "INSERT INTO events (at, kind, subject, data) VALUES (?, 'k', ?, '{}')",
        [(float(n), f"old-{n}") for n in range(1, 6)],
    )
    assert (
        "AUTOINCREMENT"
        in conn.execute("SELECT sql FROM sqlite_master WHERE name = 'events'").fetchone()[0]
    )
    conn.close()
    async with open_repository(repo_path) as repo:

        def two(tx: Tx) -> None:
            tx.emit("k", "new-1")
            tx.emit("k", "new-2")

        await repo.write(two)
        events = await repo.events_since(0)
    assert [(e.id, e.subject) for e in events] == [
        *[(n, f"old-{n}") for n in range(1, 6)],
        (6, "new-1"),
        (7, "new-2"),
    ]
    conn = connect(repo_path)
    sql = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'events'").fetchone()[0]
    assert "AUTOINCREMENT" not in sql
    assert conn.execute(
        "SELECT count(*) FROM sqlite_sequence WHERE name = 'events'"
    ).fetchone() == (0,)
    assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    indexes = {r[1] for r in conn.execute("PRAGMA index_list(events)")}
    assert "events_subject" in indexes


async def test_a_commit_with_events_no_longer_writes_sqlite_sequence(repo_path: Path) -> None:
    """Committing events leaves sqlite_sequence alone (one page less in the WAL per commit)."""
    async with open_repository(repo_path) as repo:
        for n in range(3):

            def one(tx: Tx, n: int = n) -> None:
                tx.emit("k", f"s-{n}")

            await repo.write(one)
    conn = connect(repo_path)
    assert conn.execute("SELECT name FROM sqlite_sequence").fetchall() == []


async def test_queries_by_parent_use_the_unique_index_once_jobs_parent_is_gone(
    repo_path: Path,
) -> None:
    """Migration 5 drops jobs_parent: looking children up by parent (in call order) still
    searches an index, the UNIQUE (parent_id, call_seq) one, instead of scanning jobs."""
    async with open_repository(repo_path):
        pass
    conn = connect(repo_path)
    names = {r[1] for r in conn.execute("PRAGMA index_list(jobs)")}
    assert "jobs_parent" not in names
    plan = conn.execute(
        "EXPLAIN QUERY PLAN SELECT id FROM jobs WHERE parent_id = ? ORDER BY call_seq", ("j1",)
    ).fetchall()
    assert [row[3] for row in plan] == [
        "SEARCH jobs USING INDEX sqlite_autoindex_jobs_2 (parent_id=?)"
    ]
