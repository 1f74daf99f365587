"""The archive of finished works: their products and plots copied into the workspace.

When a work with ``archive = true`` is updated to success with ``products`` or ``plots``,
the engine copies each named file into ``<workspace>/archive/<pipeline>/<work id>/`` and
records its source path, archived path, size and sha256 (table ``work_files``). The work
itself keeps the paths its worker gave. Only files the engine can read are archived: a path
that is relative, missing or unreadable on the engine's host is recorded with the reason
and ``archived`` empty (a worker on another host must put its files where the engine sees
them, e.g. shared storage). The copies are made before the update is committed, off the
event loop; if the update is then refused they are removed.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs


@attrs.frozen(kw_only=True)
class ArchivedFile:
    """One product or plot of a finished work, as archived (or why not)."""

    kind: str  # "product" or "plot"
    source: str  # the path the worker gave
    archived: str | None = None  # where the copy is; None when there is none
    size: int | None = None
    sha256: str | None = None
    reason: str | None = None  # why there is no copy

    def as_data(self) -> dict[str, Any]:
        return attrs.asdict(self)


def work_archive(root: Path, pipeline: str, work_id: str) -> Path:
    """Where a work's files are archived."""
    return root / "archive" / pipeline / work_id


def _paths(value: Any) -> list[str]:
    if isinstance(value, list) and all(isinstance(p, str) for p in value):
        return list(value)
    return []  # not a list of paths: the update itself is refused


def archive_files(
    root: Path, pipeline: str, work_id: str, products: Any, plots: Any
) -> list[ArchivedFile]:
    """Copy a work's products and plots into its archive folder (blocking: run it in a
    thread); return what became of each."""
    folder = work_archive(root, pipeline, work_id)
    done: list[ArchivedFile] = []
    names: set[str] = set()
    for kind, paths in (("product", _paths(products)), ("plot", _paths(plots))):
        for source in dict.fromkeys(paths):
            path = Path(source)
            if not path.is_absolute():
                done.append(ArchivedFile(kind=kind, source=source, reason="not an absolute path"))
                continue
            if not path.is_file():
                reason = "not found on the engine's host"
                done.append(ArchivedFile(kind=kind, source=source, reason=reason))
                continue
            name = path.name if path.name not in names else f"{len(names)}-{path.name}"
            names.add(name)
            target = folder / name
            try:
                folder.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, target)
                with open(target, "rb") as f:
                    digest = hashlib.file_digest(f, "sha256").hexdigest()
            except OSError as exc:
                done.append(ArchivedFile(kind=kind, source=source, reason=f"copy failed: {exc}"))
                continue
            done.append(
                ArchivedFile(
                    kind=kind,
                    source=source,
                    archived=str(target),
                    size=target.stat().st_size,
                    sha256=digest,
                )
            )
    return done


def remove_archive(root: Path, pipeline: str, work_id: str) -> None:
    """Remove a work's archive folder (its update was refused after the copies were made)."""
    shutil.rmtree(work_archive(root, pipeline, work_id), ignore_errors=True)


def wanted(changes: dict[str, Any], files: Sequence[str] = ("products", "plots")) -> bool:
    """Whether an update asks for archiving: success with products or plots."""
    return changes.get("status") == "success" and any(changes.get(k) for k in files)


__all__ = ["ArchivedFile", "archive_files", "remove_archive", "wanted", "work_archive"]
