"""``wfe purge --before DATE``: delete the stored output and the events of old finished jobs.

What goes: for each root job that ended before the cutoff, with its whole tree ended, the
``output`` rows and the ``events`` whose subject is a job of that tree. The job rows and
their attempts stay (ids, states, exit codes, times: the books), so ``wfe status`` still
answers for them and a product's provenance still resolves.

What is never touched (docs/decisions.md, "Retention"):

- a job of a request that has not ended (draft ... running, paused, checking): a running or
  standing request still allocates, checks and re-runs from them;
- a job that made a product, and the rest of its tree (provenance, and its output as the
  record of how the product was made);
- anything that is not a job's output or a job's event (requests, definitions, catalog,
  products, tokens, agents' and the engine's own events).

Each batch of trees is deleted in one write op together with a ``repository.purged`` event
(cutoff, who asked, how many jobs, events and output bytes), so the purge is itself
recorded, and the writer is held for one batch at a time. ``dry_run`` only counts.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

import attrs
import trio

from wfe.engine.repository.jobs import TERMINAL_SQL
from wfe.engine.repository.rowtypes import Conn, Db
from wfe.engine.repository.writer import Tx
from wfe.engine.runtime.clock import wall_now
from wfe.protocols.request import TERMINAL_STATES, RequestState

if TYPE_CHECKING:
    from wfe.engine.config import RetentionSection
    from wfe.engine.repository import Repository

log = logging.getLogger("wfe.retention")

#: Root jobs per write op: small enough that one commit stays short.
BATCH = 200
PURGE_EVENT = "repository.purged"
#: Requests whose jobs are still theirs to run or check (not yet ended): never purged.
_LIVE_REQUESTS = "({})".format(
    ", ".join(
        f"'{s.value}'"
        for s in RequestState
        if s not in TERMINAL_STATES and s is not RequestState.ARCHIVED
    )
)


@attrs.frozen(kw_only=True)
class PurgeCount:
    """What a purge deleted (or, dry, would delete)."""

    roots: int = 0  # root jobs whose trees were purged
    jobs: int = 0  # jobs in those trees
    events: int = 0
    output_bytes: int = 0
    output_chunks: int = 0

    def __add__(self, other: PurgeCount) -> PurgeCount:
        return PurgeCount(**{k: getattr(self, k) + getattr(other, k) for k in _FIELDS})

    def as_dict(self) -> dict[str, int]:
        return attrs.asdict(self)


_FIELDS = tuple(f.name for f in attrs.fields(PurgeCount))


def purgeable_roots(before: float, *, after_id: str = "", limit: int = BATCH) -> str:
    """SQL (two parameters: ``before``, ``after_id``) selecting root jobs whose tree may be
    purged, in id order after ``after_id``."""
    return f"""
        SELECT r.id FROM jobs r
        WHERE r.parent_id IS NULL AND r.id > ?2
          AND r.state IN ({TERMINAL_SQL}) AND r.ended_at < ?1
          AND NOT EXISTS (
            SELECT 1 FROM jobs j WHERE j.root_id = r.id AND (
              j.state NOT IN ({TERMINAL_SQL})
              OR j.ended_at >= ?1
              OR EXISTS (SELECT 1 FROM products p WHERE p.job = j.id)
              OR EXISTS (SELECT 1 FROM requests q
                         WHERE q.id = j.request_id AND q.state IN {_LIVE_REQUESTS})))
        ORDER BY r.id LIMIT {int(limit)}"""


def _tree_count(conn: Db, roots: list[str]) -> tuple[PurgeCount, list[str]]:
    marks = ", ".join("?" * len(roots))
    jobs = [r[0] for r in conn.execute(f"SELECT id FROM jobs WHERE root_id IN ({marks})", roots)]
    if not jobs:
        return PurgeCount(), jobs
    jmarks = ", ".join("?" * len(jobs))
    chunks, size = conn.execute(
        f"SELECT COUNT(*), COALESCE(SUM(length(data)), 0) FROM output WHERE job_id IN ({jmarks})",
        jobs,
    ).fetchone()
    (events,) = conn.execute(
        f"SELECT COUNT(*) FROM events WHERE subject IN ({jmarks})", jobs
    ).fetchone()
    count = PurgeCount(
        roots=len(roots), jobs=len(jobs), events=events, output_bytes=size, output_chunks=chunks
    )
    return count, jobs


def count_purge(before: float) -> Callable[[Conn], PurgeCount]:
    """A read function: what ``purge_batch`` calls would delete, in total (a dry run)."""

    def fn(conn: Conn) -> PurgeCount:
        total, after = PurgeCount(), ""
        while True:
            roots = [r[0] for r in conn.execute(purgeable_roots(before), (before, after))]
            if not roots:
                return total
            count, _ = _tree_count(conn, roots)
            total, after = total + count, roots[-1]

    return fn


def purge_batch(
    before: float, *, after_id: str, by: str | None
) -> Callable[[Tx], tuple[PurgeCount, str | None]]:
    """A write op: purge up to ``BATCH`` trees after root ``after_id`` and record it; return
    the count and the last root purged (None when nothing was left)."""

    def op(tx: Tx) -> tuple[PurgeCount, str | None]:
        roots = [r[0] for r in tx.execute(purgeable_roots(before), (before, after_id))]
        if not roots:
            return PurgeCount(), None
        count, jobs = _tree_count(tx, roots)
        jmarks = ", ".join("?" * len(jobs))
        tx.execute(f"DELETE FROM output WHERE job_id IN ({jmarks})", jobs)
        tx.execute(f"DELETE FROM events WHERE subject IN ({jmarks})", jobs)
        tx.emit(
            PURGE_EVENT,
            "repository",
            {"before": before, "by": by, "first": roots[0], "last": roots[-1], **count.as_dict()},
        )
        return count, roots[-1]

    return op


async def purge_before(repo: Repository, before: float, *, by: str | None) -> PurgeCount:
    """Purge every tree that ended before ``before``, batch by batch; return the total."""
    total, after = PurgeCount(), ""
    while True:
        count, last = await repo.write(purge_batch(before, after_id=after, by=by))
        if last is None:
            return total
        total, after = total + count, last


async def keep_trimmed(
    repo: Repository, section: RetentionSection, *, now: Callable[[], float] = wall_now
) -> None:
    """``[retention]`` in ``wfe engine``: with ``keep_days`` set, purge what ended longer
    ago at once and then every ``interval`` seconds (trio's clock), as ``retention``; with
    ``keep_days = 0`` return at once (keep everything)."""
    if section.keep_days <= 0:
        return
    while True:
        count = await purge_before(repo, now() - section.keep_days * 86400, by="retention")
        if count.roots:
            log.info("retention: purged %s", count.as_dict())
        await trio.sleep(section.interval)
