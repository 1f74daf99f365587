"""Disk pressure: which intermediate product files to purge, and the task that does it.

``[storage] quota`` (bytes) and ``purge_at`` (a fraction of it) in wfe.toml: when the
product files the engine keeps (every product not yet purged) add up to more than
``quota * purge_at``, the engine deletes intermediate product files of finished jobs,
oldest first, until the total is back at or below the mark. It never touches a final
product, nor a product that a stage has yet to process (an input waiting for a job, or
held by a running one).
The records stay, with their checksums and provenance; each purge is a ``product.purged``
event committed before the file is deleted (a crash in between leaves a file on disk that
is marked purged: space, not bookkeeping, is lost).

``choose`` is the pure decision; ``Purger.check`` reads, decides, writes and deletes.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING

import attrs
import trio

from wfe.engine.repository import standing as standing_store

if TYPE_CHECKING:
    from wfe.engine.repository import Repository

log = logging.getLogger("wfe.requests")


@attrs.frozen(kw_only=True)
class Candidate:
    """A product file the engine keeps, as the purge sees it."""

    id: str
    size: int
    created_at: float
    intermediate: bool
    in_use: bool  # an input of an open batch


def choose(products: Sequence[Candidate], *, quota: int, purge_at: float) -> list[str]:
    """Ids to purge, oldest first, so that the kept total is at most ``quota * purge_at``;
    only intermediate products not in use. Empty when under the mark (or nothing may go)."""
    used = sum(p.size for p in products)
    mark = quota * purge_at
    chosen: list[str] = []
    if used <= mark:
        return chosen
    for p in sorted(products, key=lambda p: (p.created_at, p.id)):
        if used <= mark:
            break
        if p.intermediate and not p.in_use:
            chosen.append(p.id)
            used -= p.size
    return chosen


class Purger:
    """Keeps the product files under the quota (``check`` after products are recorded)."""

    def __init__(self, repo: Repository, *, quota: int | None, purge_at: float) -> None:
        self.repo = repo
        self.quota = quota
        self.purge_at = purge_at
        self.purged = 0  # files deleted since start
        self.freed = 0  # bytes

    async def check(self, protected: Collection[tuple[str, str]] = ()) -> list[str]:
        """Purge what ``choose`` says now, keeping every input of the ``protected``
        ``(request, stage)`` pairs; returns the ids purged."""
        if self.quota is None:
            return []
        rows = await self.repo.read(standing_store.kept_products(protected))
        candidates = [
            Candidate(id=r[0], size=r[1], created_at=r[2], intermediate=r[3], in_use=r[4])
            for r in rows
        ]
        ids = choose(candidates, quota=self.quota, purge_at=self.purge_at)
        if not ids:
            return []
        paths = await self.repo.write(standing_store.mark_purged(ids))

        def delete() -> int:
            freed = 0
            for path, size in paths:
                try:
                    os.unlink(path)
                    freed += size
                except FileNotFoundError:
                    pass
                except OSError as exc:
                    log.warning("purge: cannot delete %s: %s", path, exc)
            return freed

        self.freed += await trio.to_thread.run_sync(delete)
        self.purged += len(paths)
        return ids
