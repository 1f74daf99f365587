"""Whole output for finished attempts: find the chunks missing when a result arrives, fetch them.

An agent numbers an attempt's ``OutputChunk``s from 0 and says in ``JobFinished.chunks`` how
many it sent; it keeps them in its spool until the engine ``Ack``s the result. Chunks sent
while a connection was down are lost on the way (an XMPP server does not keep them for us),
so a result may arrive with holes in the stored output behind it. The controller asks
``OutputFill.complete`` before it commits an attempt's end: when every chunk arrived (the
usual case, decided in memory, no await) it returns at once; otherwise it reads which seqs
the repository holds, sends the agent a ``Resume`` from the first missing one, and waits until
the missing chunks came (or ``wait`` seconds passed: then it logs what is missing and lets
the end be committed, since the result itself is right). The agent replays from its spool.

``seen`` must be called for every chunk the controller receives; ``relink`` when the agent
holding an attempt being filled reconnects (its ``Resume`` may have been lost with the old
connection); ``filling`` tells whether an attempt is waiting for chunks, so that a resent
result is not acknowledged (the ``Ack`` would make the agent drop the output we still need).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

import attrs
import trio

from wfe.engine.dispatch.live import AgentLink
from wfe.engine.repository import attempts as rows
from wfe.protocols.messages import JobFinished, OutputChunk, Resume

if TYPE_CHECKING:
    from wfe.engine.repository import Repository

log = logging.getLogger("wfe.controller")

#: Seconds a finished attempt waits for its missing output before its end is committed anyway.
FILL_WAIT = 60.0
#: Attempts whose received seqs are tracked at once; the oldest are forgotten beyond this
#: (which only costs a repository read when that attempt finishes).
MAX_TRACKED = 4096


@attrs.define
class SeqSet:
    """The seqs received of one attempt: all below ``below``, and ``above`` (sparse) beyond."""

    below: int = 0
    above: set[int] = attrs.Factory(set)

    def add(self, seq: int) -> None:
        if seq < self.below:
            return
        if seq != self.below:
            self.above.add(seq)
            return
        self.below += 1
        while self.below in self.above:
            self.above.discard(self.below)
            self.below += 1

    def __contains__(self, seq: int) -> bool:
        return seq < self.below or seq in self.above

    def whole(self, count: int) -> bool:
        """True when every seq in ``0..count-1`` was received."""
        return self.below >= count


def missing(count: int, *received: Callable[[int], bool]) -> list[int]:
    """The seqs of ``0..count-1`` that none of the ``received`` predicates holds for."""
    return [seq for seq in range(count) if not any(has(seq) for has in received)]


@attrs.define(eq=False)
class _Fill:
    finished: JobFinished
    missing: set[int] | None = None  # None while the stored seqs are being read
    done: trio.Event = attrs.Factory(trio.Event)


class OutputFill:
    """Tracks received output seqs and fills holes before results are committed."""

    def __init__(self, repo: Repository, *, wait: float = FILL_WAIT) -> None:
        self.repo = repo
        self.wait = wait
        self.filled = 0  # attempts whose output needed a Resume after their result
        self.incomplete = 0  # attempts committed with output still missing after ``wait``
        self._seen: dict[tuple[str, int], SeqSet] = {}
        self._fills: dict[tuple[str, int], _Fill] = {}

    def seen(self, chunk: OutputChunk) -> None:
        """Record that ``chunk`` arrived (it is being stored)."""
        key = (chunk.job_id, chunk.attempt)
        seqs = self._seen.get(key)
        if seqs is None:
            if len(self._seen) >= MAX_TRACKED:
                del self._seen[next(iter(self._seen))]
            seqs = self._seen[key] = SeqSet()
        seqs.add(chunk.seq)
        fill = self._fills.get(key)
        if fill is not None and fill.missing is not None:
            fill.missing.discard(chunk.seq)
            if not fill.missing:
                fill.done.set()

    def forget(self, job_id: str, attempt: int) -> None:
        """Stop tracking an attempt (it ended without a result, or its end is committed)."""
        self._seen.pop((job_id, attempt), None)

    def filling(self, job_id: str, attempt: int) -> bool:
        """True while a finished attempt waits for missing output, or for the read that
        tells whether it misses any."""
        return (job_id, attempt) in self._fills

    def relink(self, job_id: str, attempt: int, link: AgentLink | None) -> None:
        """Ask again on ``link`` for what an attempt being filled still misses (nothing
        while the stored seqs are read: ``complete`` asks on the current link after it)."""
        fill = self._fills.get((job_id, attempt))
        if fill is not None and fill.missing and link is not None:
            link.send_nowait(Resume(job_id=job_id, attempt=attempt, next_seq=min(fill.missing)))

    async def complete(self, finished: JobFinished, link: Callable[[], AgentLink | None]) -> None:
        """Return once every chunk ``finished`` counts was received, or ``wait`` passed.

        ``link()`` gives the agent's current link (None while it is away). Cancellation
        leaves nothing behind.
        """
        key = (finished.job_id, finished.attempt)
        seqs = self._seen.setdefault(key, SeqSet())  # chunks arriving meanwhile land here
        try:
            if seqs.whole(finished.chunks):
                return
            # Filling from here on: a result resent meanwhile must not be acknowledged.
            fill = self._fills[key] = _Fill(finished=finished)
            stored = set(await self.repo.read(rows.output_seqs(*key)))
            holes = set(missing(finished.chunks, stored.__contains__, seqs.__contains__))
            if not holes:
                return
            fill.missing = holes
            self.filled += 1
            log.info(
                "output of %s#%d: %d of %d chunks missing after the result; asking the agent",
                *key,
                len(fill.missing),
                finished.chunks,
            )
            self.relink(*key, link())
            with trio.move_on_after(self.wait):
                await fill.done.wait()
            if fill.missing:
                self.incomplete += 1
                log.warning(
                    "output of %s#%d stays incomplete: %d of %d chunks never came within %g s",
                    *key,
                    len(fill.missing),
                    finished.chunks,
                    self.wait,
                )
        finally:
            self._fills.pop(key, None)
            self._seen.pop(key, None)
