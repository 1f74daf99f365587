"""The ``catalog`` table: the files requests can process, by absolute path.

Adding a path again refreshes its size, checksum and metadata; each entry added or refreshed
emits ``catalog.added`` / ``catalog.updated`` in the same transaction.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping, Sequence

import attrs

from wfe.engine.repository.rowtypes import Conn, JsonObject, JsonValue
from wfe.engine.repository.writer import Tx


@attrs.frozen(kw_only=True)
class NewEntry:
    """A file to record: its absolute path, size, sha256 and metadata."""

    path: str
    size: int
    sha256: str
    metadata: Mapping[str, JsonValue]


@attrs.frozen(kw_only=True)
class CatalogEntry:
    """An entry as the catalog holds it."""

    path: str
    size: int
    sha256: str
    metadata: JsonObject
    added_at: float


def add_entries(
    entries: Sequence[NewEntry], *, by: str | None = None
) -> Callable[[Tx], list[JsonObject]]:
    """Write op: insert or refresh catalog entries, one event each (with ``by``, who added
    them). Returns each entry as JSON-ready data with ``new`` (not known before)."""

    def op(tx: Tx) -> list[JsonObject]:
        result: list[JsonObject] = []
        for entry in entries:
            path, size, sha = entry.path, entry.size, entry.sha256
            known = (
                tx.execute("SELECT 1 FROM catalog WHERE path = ?", (path,)).fetchone() is not None
            )
            tx.execute(
                "INSERT INTO catalog (path, size, sha256, metadata, added_at) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT (path) DO UPDATE SET size = excluded.size, sha256 = excluded.sha256,"
                " metadata = excluded.metadata, added_at = excluded.added_at",
                (path, size, sha, json.dumps(dict(entry.metadata)), tx.at),
            )
            data: JsonObject = {"size": size, "sha256": sha}
            if by:
                data["by"] = by
            tx.emit("catalog.updated" if known else "catalog.added", path, data)
            result.append(
                {
                    "path": path,
                    "size": size,
                    "sha256": sha,
                    "metadata": dict(entry.metadata),
                    "new": not known,
                }
            )
        return result

    return op


def list_entries(*, limit: int | None = None) -> Callable[[Conn], list[CatalogEntry]]:
    """Read: catalog entries in path order (at most ``limit`` when given)."""

    def fn(conn: Conn) -> list[CatalogEntry]:
        sql = "SELECT path, size, sha256, metadata, added_at FROM catalog ORDER BY path"
        rows = conn.execute(
            sql + (" LIMIT ?" if limit else ""), (limit,) if limit else ()
        ).fetchall()
        return [
            CatalogEntry(
                path=r[0], size=r[1], sha256=r[2], metadata=json.loads(r[3]), added_at=r[4]
            )
            for r in rows
        ]

    return fn


def scan(conn: Conn) -> Iterator[tuple[str, int, JsonObject]]:
    """``(path, size, metadata)`` of every entry, in path order (what the finder matches)."""
    for path, size, meta in conn.execute("SELECT path, size, metadata FROM catalog ORDER BY path"):
        yield path, size, json.loads(meta)


def entry(conn: Conn, path: str) -> CatalogEntry | None:
    """The entry for ``path``, or None."""
    row = conn.execute(
        "SELECT path, size, sha256, metadata, added_at FROM catalog WHERE path = ?", (path,)
    ).fetchone()
    if row is None:
        return None
    return CatalogEntry(
        path=row[0], size=row[1], sha256=row[2], metadata=json.loads(row[3]), added_at=row[4]
    )
