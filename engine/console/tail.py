"""``tail``: a job's output pushed while it is produced, complete and in order.

Theory of operation: the tail registers with the agent controller for the job's live
output chunks *before* it reads what is already stored, so nothing falls between the two.
Each attempt's chunks are numbered from 0; the tail keeps the next number it owes the client
per attempt. A live chunk with a higher number means chunks were dropped on the way (the
controller drops chunks for a watcher that is behind rather than wait for it): the tail then
waits for the repository to commit what was queued and sends the missing chunks from there.
When the job's terminal state is committed, the tail sends whatever is still stored but
unsent, then ``{"end": true, "state": ...}``. So the client gets every byte once, whatever
its speed; only the tail task waits for a slow client, never the engine.
"""

from __future__ import annotations

import codecs
from typing import TYPE_CHECKING, Any

import trio

from wfe.engine.console import protocol
from wfe.engine.runtime.jobs import TERMINAL

if TYPE_CHECKING:
    from wfe.engine.console.session import Session
    from wfe.protocols.messages import OutputChunk

FRAME_BYTES = 256 * 1024  # stored output is sent in frames of at most this much
LIVE_BUFFER = 256  # live chunks held for one tail before the controller drops them


class Tail:
    """The state of one tail stream."""

    def __init__(self, session: Session, stream_id: int, job_id: str) -> None:
        self.session = session
        self.stream_id = stream_id
        self.job_id = job_id
        self.next_seq: dict[int, int] = {}
        self._decoders: dict[tuple[int, str], Any] = {}

    async def run(
        self, attempt: int, ready: trio.Event, live: trio.MemoryReceiveChannel[OutputChunk]
    ) -> None:
        """Send stored output of ``attempt``, then live output, until the job has ended."""
        engine = self.session.engine
        hub = self.session.server.hub
        await ready.wait()
        if attempt:
            await self._catch_up(attempt, None)
        while True:
            ended = hub.job_ended(self.job_id)  # before reading the state: no gap
            job = await engine.job(self.job_id)
            if job["state"] in TERMINAL:
                break
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_cancel_when_set, ended, nursery.cancel_scope)
                async for chunk in live:
                    await self._live(chunk)
        while True:  # what arrived live before the end was committed
            try:
                await self._live(live.receive_nowait())
            except (trio.WouldBlock, trio.EndOfChannel):
                break
        last = job["attempts"]
        if last:
            await self._catch_up(last, None)
        await self.session.send(
            protocol.push(self.stream_id, end=True, state=job["state"], error=job["error"])
        )

    async def _live(self, chunk: OutputChunk) -> None:
        expected = self.next_seq.get(chunk.attempt, 0)
        if chunk.seq < expected:
            return  # sent already, from the repository
        if chunk.seq > expected:
            await self._catch_up(chunk.attempt, chunk.seq)
            if chunk.seq < self.next_seq.get(chunk.attempt, 0):
                return
        await self._send(chunk.attempt, [(chunk.seq, chunk.stream.value, chunk.data)])

    async def _catch_up(self, attempt: int, before: int | None) -> None:
        """Send the stored chunks of ``attempt`` not sent yet (those below seq ``before``).

        Chunks that are nowhere to be found are reported as ``missed`` (seq range).
        """
        engine = self.session.engine
        await engine.flush()  # chunks are queued for the writer before they are handed to us
        while True:
            start = self.next_seq.get(attempt, 0)
            if before is not None and start >= before:
                return
            rows = await engine.output_chunks(self.job_id, attempt, start)
            if before is not None:
                rows = [r for r in rows if r[0] < before]
            if not rows or rows[0][0] != start:
                if not rows and before is None:
                    return  # all sent
                gap_end = rows[0][0] if rows else before
                missed = {"attempt": attempt, "from_seq": start, "to_seq": gap_end}
                await self.session.send(protocol.push(self.stream_id, missed=missed))
                self.next_seq[attempt] = int(gap_end or start)
                continue
            contiguous = [row for i, row in enumerate(rows) if row[0] == start + i]
            await self._send(attempt, contiguous)

    async def _send(self, attempt: int, chunks: list[tuple[int, str, bytes]]) -> None:
        """Send consecutive chunks, joined per channel into frames of at most FRAME_BYTES.

        ``next_seq`` moves only once a frame is sent: the tail may be cancelled (the job
        ended) in the middle of a send, and the final catch-up must then send that frame's
        chunks again rather than skip them.
        """
        batch: list[bytes] = []
        channel = chunks[0][1]
        size = 0
        last = chunks[0][0] - 1
        for seq, chan, data in chunks:
            if batch and (chan != channel or size + len(data) > FRAME_BYTES):
                await self._frame(attempt, channel, b"".join(batch))
                self.next_seq[attempt] = last + 1
                batch, size = [], 0
            channel = chan
            batch.append(data)
            size += len(data)
            last = seq
        if batch:
            await self._frame(attempt, channel, b"".join(batch))
            self.next_seq[attempt] = last + 1

    async def _frame(self, attempt: int, channel: str, data: bytes) -> None:
        decoder = self._decoders.get((attempt, channel))
        if decoder is None:
            decoder = self._decoders[(attempt, channel)] = codecs.getincrementaldecoder("utf-8")(
                "replace"
            )
        text = decoder.decode(data)
        if text:
            await self.session.send(
                protocol.push(self.stream_id, output=text, attempt=attempt, channel=channel)
            )


async def _cancel_when_set(event: trio.Event, scope: trio.CancelScope) -> None:
    await event.wait()
    scope.cancel()


async def start_tail(session: Session, job_id: str) -> dict[str, Any]:
    """Open a tail stream on ``job_id``; return the reply. Raises ``UnknownJob``."""
    engine = session.engine
    send, receive = trio.open_memory_channel["OutputChunk"](LIVE_BUFFER)
    stop = engine.watch_output(job_id, send)  # before reading: no gap
    try:
        job = await engine.job(job_id)
    except BaseException:
        stop()
        raise

    async def body(stream_id: int, ready: trio.Event) -> None:
        try:
            with receive:
                await Tail(session, stream_id, job_id).run(job["attempts"], ready, receive)
        finally:
            stop()

    stream_id = session.open_task_stream(body)
    return {"stream": stream_id, "job": job_id, "state": job["state"], "attempt": job["attempts"]}
