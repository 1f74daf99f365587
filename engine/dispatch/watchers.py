"""Live output: who watches which job's output chunks as they arrive.

A watcher gets the chunks of one job on a memory channel. Delivery never blocks the
controller: a watcher too slow to keep up misses chunks live (the full output is in the
repository), and a watcher whose channel is closed is dropped.
"""

from __future__ import annotations

from collections.abc import Callable

import trio

from wfe.protocols.messages import OutputChunk


class OutputWatchers:
    """The channels watching each job's output."""

    def __init__(self) -> None:
        self._watchers: dict[str, set[trio.MemorySendChannel[OutputChunk]]] = {}

    def watch(
        self, job_id: str, channel: trio.MemorySendChannel[OutputChunk]
    ) -> Callable[[], None]:
        """Send ``job_id``'s chunks on ``channel`` from now on; call the result to stop."""
        self._watchers.setdefault(job_id, set()).add(channel)

        def stop() -> None:
            watchers = self._watchers.get(job_id)
            if watchers is not None:
                watchers.discard(channel)
                if not watchers:
                    del self._watchers[job_id]

        return stop

    def send(self, chunk: OutputChunk) -> None:
        """Give ``chunk`` to its job's watchers, without waiting for any."""
        for channel in list(self._watchers.get(chunk.job_id, ())):
            try:
                channel.send_nowait(chunk)
            except trio.WouldBlock:
                pass  # a slow watcher misses chunks live; the full output is in the repository
            except trio.BrokenResourceError:
                self._watchers[chunk.job_id].discard(channel)
