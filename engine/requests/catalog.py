"""The catalog of files requests can process, and the finder that queries it.

``wfe catalog add PATH... [--meta k=v]`` registers files by absolute path with their size,
sha256 and metadata. Metadata comes from a sidecar ``PATH.meta.json`` when there is one
(a JSON object, as ``examples/pipeline/make_data.py`` writes), overlaid with ``--meta``.
Adding a path again refreshes its size, checksum and metadata. The files are hashed on a
worker thread; one bad path refuses the whole call and stores nothing.

The finder matches a definition's ``[query]`` against each entry's metadata plus ``path``,
``name`` (the file name) and ``size`` where the metadata does not set those keys itself;
entries come in path order, which is the order a stage's inputs are batched in. The SQL
is in ``wfe.engine.repository.catalog``.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TypeAlias

import trio

from wfe.engine.definitions import Query
from wfe.engine.repository.catalog import NewEntry, add_entries, list_entries, scan
from wfe.engine.repository.rowtypes import Conn, JsonObject, JsonValue
from wfe.engine.requests.errors import CatalogError
from wfe.engine.requests.model import catalog_key

__all__ = ["CatalogMatch", "add_entries", "describe_files", "find", "hash_file", "list_entries"]

#: What the finder gives for one entry: ``(input key, path, metadata)``.
CatalogMatch: TypeAlias = "tuple[str, str, JsonObject]"

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


def _describe(path: Path, extra: Mapping[str, JsonValue]) -> NewEntry:
    """Blocking: check, hash and read the sidecar of one file."""
    if not path.exists():
        raise CatalogError(f"{path}: no such file")
    if not path.is_file():
        raise CatalogError(f"{path}: not a regular file (give files, e.g. DIR/*.csv)")
    metadata: JsonObject = {}
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
    return NewEntry(path=str(path), size=size, sha256=sha, metadata=metadata)


async def describe_files(
    paths: Sequence[str], metadata: Mapping[str, JsonValue] | None = None
) -> list[NewEntry]:
    """Check and hash ``paths`` (absolute) on a worker thread; raises ``CatalogError``."""
    for p in paths:
        if not os.path.isabs(p):
            raise CatalogError(f"{p}: give an absolute path (the engine may run elsewhere)")
    if metadata is not None and not isinstance(metadata, Mapping):
        raise CatalogError("metadata must be an object")
    extra = dict(metadata or {})

    def work() -> list[NewEntry]:
        return [_describe(Path(os.path.normpath(p)), extra) for p in paths]

    return await trio.to_thread.run_sync(work)


def view(path: str, size: int, metadata: Mapping[str, JsonValue]) -> JsonObject:
    """What a query sees of an entry: its metadata, plus path, name and size if unset."""
    return {"path": path, "name": os.path.basename(path), "size": size, **metadata}


def metadata_keys(conn: Conn) -> set[str]:
    """Read: every key a query can see in some catalog entry (metadata, path, name, size)."""
    keys = {"path", "name", "size"}
    for _, _, metadata in scan(conn):
        keys.update(metadata)
    return keys


def find(query: Query) -> Callable[[Conn], list[CatalogMatch]]:
    """Read: the finder. ``(input key, path, metadata)`` of every entry ``query`` matches."""

    def fn(conn: Conn) -> list[CatalogMatch]:
        return [
            (catalog_key(path), path, metadata)
            for path, size, metadata in scan(conn)
            if query.matches(view(path, size, metadata))
        ]

    return fn
