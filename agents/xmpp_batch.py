"""Runs of big incompressible output chunks, uploaded over HTTP and sent as one reference.

``OutputBatch`` belongs to one agent session with one controller. The link hands it the chunks
``wfe.links.xmpp_upload.worth_uploading`` picks; it keeps those of one attempt until they reach
``max_bytes``, another message must go out (the link calls ``flush`` first, so order holds),
or ``flush_after`` seconds passed since the first of them; then it asks the upload service for
a slot, PUTs the packed run, and sends the ``<upload>`` reference in place of the chunks. Up
to ``MAX_INFLIGHT`` runs are uploaded at once while the next one gathers; their references go
out in order, and ``flush`` waits for all of them.

When an upload fails (slot refused, HTTP error) the run goes inline as ordinary chunk stanzas,
and the batch takes nothing more for the rest of the session: one failure each session costs
one wasted request, not one per run. A run that cannot go out at all (the connection is down)
is lost like any stanza sent into a dead connection; the engine asks for it again
(``Resume``) before it commits the attempt's end.
"""

from __future__ import annotations

import collections
import hashlib
import logging
from typing import TYPE_CHECKING, Any

import attrs
import trio

from wfe.agents.errors import AgentError, LinkError
from wfe.links.xmpp_upload import (
    UploadRef,
    UploadService,
    file_name,
    pack,
    put,
    request_slot,
    worth_uploading,
)
from wfe.protocols.messages import OutputChunk

if TYPE_CHECKING:
    import httpx

    from wfe.links.xmpp import XmppClient

log = logging.getLogger("wfe.xmpp")

#: Seconds a run waits for more chunks before it is uploaded as it is.
FLUSH_AFTER = 0.05
#: Largest run, in bytes of chunk data (less when the service allows less).
MAX_BATCH = 4 * 1024 * 1024
#: Runs being uploaded at once: the next run gathers while one goes up.
MAX_INFLIGHT = 2
#: Room for the record headers when comparing with the service's max-file-size.
_HEADROOM = 64 * 1024


@attrs.define(eq=False)
class _Run:
    chunks: list[OutputChunk]
    done: trio.Event = attrs.Factory(trio.Event)


class OutputBatch:
    """The upload side of one session; see the module doc."""

    def __init__(
        self,
        client: XmppClient,
        peer: str,
        service: UploadService,
        http: httpx.AsyncClient,
        *,
        plain: bool,
        max_bytes: int = MAX_BATCH,
        flush_after: float = FLUSH_AFTER,
    ) -> None:
        self.client = client
        self.peer = peer
        self.service = service
        self.http = http
        self.plain = plain
        if service.max_size is not None:
            max_bytes = min(max_bytes, service.max_size - _HEADROOM)
        self.max_bytes = max_bytes
        self.flush_after = flush_after
        self.broken = max_bytes < 1
        self.uploads = 0
        self.uploaded_bytes = 0
        self._chunks: list[OutputChunk] = []
        self._size = 0
        self._deadline = 0.0
        self._lock = trio.Lock()
        self._started = trio.Event()
        self._inflight: collections.deque[_Run] = collections.deque()
        self._nursery: trio.Nursery | None = None
        self._ready = trio.Event()
        self._lost = False
        self.closed = False

    def takes(self, chunk: OutputChunk) -> bool:
        """True when ``chunk`` should travel by HTTP (while uploads work this session)."""
        return not self.broken and worth_uploading(chunk)

    async def add(self, chunk: OutputChunk) -> None:
        """Add ``chunk`` to the run; uploads the run when it is full, or first when ``chunk``
        does not follow its last chunk. Raises ``trio.BrokenResourceError`` when offline."""
        async with self._lock:
            last = self._chunks[-1] if self._chunks else None
            if last is not None and (
                (chunk.job_id, chunk.attempt, chunk.seq)
                != (last.job_id, last.attempt, last.seq + 1)
                or self._size + len(chunk.data) > self.max_bytes
            ):
                await self._flush_locked()
            self._chunks.append(chunk)
            self._size += len(chunk.data)
            if self._size >= self.max_bytes:
                await self._flush_locked()
            elif len(self._chunks) == 1:
                self._deadline = trio.current_time() + self.flush_after
                self._started.set()

    async def flush(self) -> None:
        """Upload what is gathered and wait until every run went out (in order), so that a
        message sent next follows them. Raises ``trio.BrokenResourceError`` when offline."""
        async with self._lock:
            await self._flush_locked()
            while self._inflight:
                await self._inflight[-1].done.wait()
        if self._lost:
            self._lost = False
            raise trio.BrokenResourceError("output runs could not be sent: the connection is down")

    async def run(self) -> None:
        """Host the uploads, and upload each run ``flush_after`` seconds after its first
        chunk; until cancelled."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                self._ready.set()
                while True:
                    await self._started.wait()
                    self._started = trio.Event()
                    await trio.sleep_until(self._deadline)
                    async with self._lock:
                        if self._chunks and trio.current_time() >= self._deadline:
                            await self._flush_locked()
        finally:
            self.closed = True  # the session ended: nothing waits for uploads any more
            self._ready.set()

    async def _flush_locked(self) -> None:
        """Start uploading the gathered run; at most ``MAX_INFLIGHT`` runs are under way."""
        chunks, self._chunks, self._size = self._chunks, [], 0
        if not chunks:
            return
        if len(self._inflight) >= MAX_INFLIGHT:
            await self._inflight[0].done.wait()
        await self._ready.wait()
        if self.closed or self._nursery is None:
            raise trio.ClosedResourceError("the session ended before its output was uploaded")
        previous = self._inflight[-1] if self._inflight else None
        run = _Run(chunks=chunks)
        self._inflight.append(run)
        self._nursery.start_soon(self._upload, run, previous)

    async def _upload(self, run: _Run, previous: _Run | None) -> None:
        """Upload one run, then send its reference (or, if the upload failed, its chunks)
        right after the run before it went out."""
        chunks = run.chunks
        first = chunks[0]
        try:
            data = pack(chunks)
            ref: UploadRef | None = None
            try:
                if not self.broken:
                    slot = await request_slot(
                        self.client,
                        self.service,
                        file_name(first.job_id, first.attempt, first.seq),
                        len(data),
                    )
                    await put(self.http, slot, data, plain=self.plain)
                    ref = UploadRef(
                        job_id=first.job_id,
                        attempt=first.attempt,
                        seq=first.seq,
                        chunks=len(chunks),
                        size=len(data),
                        sha256=hashlib.sha256(data).hexdigest(),
                        url=slot.get,
                    )
            except (AgentError, LinkError) as exc:
                self.broken = True
                log.warning(
                    "xmpp: upload of %d output chunks failed (%s); output goes inline this session",
                    len(chunks),
                    exc,
                )
            if previous is not None:
                await previous.done.wait()
            if ref is None:
                for chunk in chunks:
                    self.client.send_message(self.peer, chunk)
            else:
                self.client.send_stanza(ref.stanza(self.peer))
                self.uploads += 1
                self.uploaded_bytes += len(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self._lost = True  # the engine asks for these chunks again before the end
        finally:
            run.done.set()
            self._inflight.remove(run)

    def statistics(self) -> dict[str, Any]:
        return {"uploads": self.uploads, "uploaded_bytes": self.uploaded_bytes}
