"""A session's outbox: bounded frames, waiting only in put."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from wfe.engine.console.outbox import Outbox


async def test_the_outbox_bounds_frames_and_waits_only_in_put(autojump_clock: Any) -> None:
    """put_nowait refuses when full; put waits for room; get drains in order; close ends it."""
    outbox = Outbox(max_frames=2)
    assert outbox.put_nowait("a") and outbox.put_nowait("b")
    assert not outbox.put_nowait("c") and outbox.refused == 1
    async with trio.open_nursery() as nursery:
        nursery.start_soon(outbox.put, "c")
        await trio.sleep(1)
        assert len(outbox) == 2
        assert await outbox.get() == "a"
    assert [await outbox.get(), await outbox.get()] == ["b", "c"]
    outbox.close()
    with pytest.raises(trio.EndOfChannel):
        await outbox.get()
    with pytest.raises(trio.ClosedResourceError):
        await outbox.put("d")
