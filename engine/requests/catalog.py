"""The catalog of files requests can process, and the finder that queries it.

``wfe catalog add PATH... [--meta k=v]`` registers files by absolute path with their size,
sha256 and metadata. Metadata comes from a sidecar ``PATH.meta.json`` when there is one
(a JSON object, as ``examples/pipeline/make_data.py`` writes), overlaid with ``--meta``.
Adding a path again refreshes its size, checksum and metadata. The files are hashed on a
worker thread; one bad path refuses the whole call and stores nothing.

The finder matches a definition's ``[query]`` against each entry's metadata plus ``path``,
``name`` (the file name) and ``size`` where the metadata does not set those keys itself;
entries come in path order, which is the order a stage's inputs are batched in.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import trio

from wfe.engine.definitions import Query
from wfe.engine.requests.errors import CatalogError
from wfe.engine.requests.model import catalog_key

CHUNK = 1 << 20
SIDECAR_SUFFIX = ".meta.json"


def hash_file(path: str | os.PathLike[str]) -> tuple[int, str]:
    """``(size, sha256 hex)`` of a file. Blocking: call it on a worker thread."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def _describe(path: Path, extra: Mapping[str, Any]) -> tuple[str, int, str, dict[str, Any]]:
    """Blocking: check, hash and read the sidecar of one file."""
    if not path.exists():
        raise CatalogError(f"{path}: no such file")
    if not path.is_file():
        raise CatalogError(f"{path}: not a regular file (give files, e.g. DIR/*.csv)")
    metadata: dict[str, Any] = {}
    sidecar = path.with_name(path.name + SIDECAR_SUFFIX)
    if sidecar.is_file():
        try:
            data = json.loads(sidecar.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise CatalogError(f"{sidecar}: unreadable metadata: {exc}") from None
        if not isinstance(data, dict):
            raise CatalogError(f"{sidecar}: metadata must be a JSON object")
        metadata.update(data)
    metadata.update(extra)
    try:
        size, sha = hash_file(path)
    except OSError as exc:
        raise CatalogError(f"{path}: cannot read: {exc.strerror or exc}") from None
    return str(path), size, sha, metadata


async def describe_files(
    paths: Sequence[str], metadata: Mapping[str, Any] | None = None
) -> list[tuple[str, int, str, dict[str, Any]]]:
    """Check and hash ``paths`` (absolute) on a worker thread; raises ``CatalogError``."""
    for p in paths:
        if not os.path.isabs(p):
            raise CatalogError(f"{p}: give an absolute path (the engine may run elsewhere)")
    if metadata is not None and not isinstance(metadata, Mapping):
        raise CatalogError("metadata must be an object")
    extra = dict(metadata or {})

    def work() -> list[tuple[str, int, str, dict[str, Any]]]:
        return [_describe(Path(os.path.normpath(p)), extra) for p in paths]

    return await trio.to_thread.run_sync(work)


def add_entries(
    entries: Sequence[tuple[str, int, str, Mapping[str, Any]]], *, by: str | None = None
) -> Callable[[Any], list[dict[str, Any]]]:
    """Write op: insert or refresh catalog entries, one event each (with ``by``, who added them)."""

    def op(tx: Any) -> list[dict[str, Any]]:
        result = []
        for path, size, sha, meta in entries:
            known = (
                tx.execute("SELECT 1 FROM catalog WHERE path = ?", (path,)).fetchone() is not None
            )
            tx.execute(
                "INSERT INTO catalog (path, size, sha256, metadata, added_at) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT (path) DO UPDATE SET size = excluded.size, sha256 = excluded.sha256,"
                " metadata = excluded.metadata, added_at = excluded.added_at",
                (path, size, sha, json.dumps(dict(meta)), tx.at),
            )
            data: dict[str, Any] = {"size": size, "sha256": sha}
            if by:
                data["by"] = by
            tx.emit("catalog.updated" if known else "catalog.added", path, data)
            result.append(
                {
                    "path": path,
                    "size": size,
                    "sha256": sha,
                    "metadata": dict(meta),
                    "new": not known,
                }
            )
        return result

    return op


def list_entries(*, limit: int | None = None) -> Callable[[Any], list[dict[str, Any]]]:
    """Read: catalog entries in path order."""

    def fn(conn: Any) -> list[dict[str, Any]]:
        sql = "SELECT path, size, sha256, metadata, added_at FROM catalog ORDER BY path"
        rows = conn.execute(
            sql + (" LIMIT ?" if limit else ""), (limit,) if limit else ()
        ).fetchall()
        return [
            {
                "path": r[0],
                "size": r[1],
                "sha256": r[2],
                "metadata": json.loads(r[3]),
                "added_at": r[4],
            }
            for r in rows
        ]

    return fn


def view(path: str, size: int, metadata: Mapping[str, Any]) -> dict[str, Any]:
    """What a query sees of an entry: its metadata, plus path, name and size if unset."""
    return {"path": path, "name": os.path.basename(path), "size": size, **metadata}


def find(query: Query) -> Callable[[Any], list[tuple[str, str, dict[str, Any]]]]:
    """Read: the finder. ``(input key, path, metadata)`` of every entry ``query`` matches."""

    def fn(conn: Any) -> list[tuple[str, str, dict[str, Any]]]:
        found = []
        for path, size, meta in conn.execute(
            "SELECT path, size, metadata FROM catalog ORDER BY path"
        ):
            metadata = json.loads(meta)
            if query.matches(view(path, size, metadata)):
                found.append((catalog_key(path), path, metadata))
        return found

    return fn
