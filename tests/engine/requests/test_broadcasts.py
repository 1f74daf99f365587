"""Broadcasts (``ctx.publish``): a stage's action publishes on a topic; console streams of
that topic in the request's namespace get it, streams of another namespace do not, and it
stays in the repository as an event anyone can replay."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from .conftest import HEAD, PATIENCE, World

ANNOUNCE = (
    HEAD
    + """
[[stages]]
name = "announce"
action = "t.announce"
consumes = "query"
"""
)


async def test_a_broadcast_reaches_its_namespace_only_and_is_stored(world: World) -> None:
    """A stream of the topic in namespace "tests" gets the broadcast (topic, message, the
    publishing job); one in namespace "elsewhere" gets nothing; ``events`` replays it."""
    await world.catalog(["a.dat", "b.dat"])
    mine = (await world.call("subscribe", kinds=["broadcast.stf_gen"], namespace="tests"))["stream"]
    other = (await world.call("subscribe", kinds=["broadcast."], namespace="elsewhere"))["stream"]
    record = await world.submit(world.definition(ANNOUNCE))
    got: list[dict[str, Any]] = []
    strangers: list[dict[str, Any]] = []
    with trio.fail_after(PATIENCE):
        async for frame in world.client.frames():
            if frame.get("stream") == mine:
                got.extend(frame["events"])
            elif frame.get("stream") == other:
                strangers.extend(frame["events"])
            if got:
                break
    [event] = got
    assert event["kind"] == "broadcast.stf_gen"
    assert event["data"] == {
        "namespace": "tests",
        "topic": "stf_gen",
        "message": {"inputs": 2, "seq": 1},
        "number": 1,
    }
    assert (await world.wait(record["id"]))["state"] == "completed"
    job = await world.call("job", job=event["subject"])
    assert job["name"] == "t.announce"
    assert strangers == []
    stored = await world.call("events", kind="broadcast.")
    assert [e["id"] for e in stored] == [event["id"]]


@pytest.mark.parametrize(
    ("bad", "problem"),
    [
        (
            "topic",
            "publish: topic '9lives': letters, digits, '_', '.', '-', starting with a letter"
            " (at most 64)",
        ),
        ("list", "publish: the message must be a JSON object, not list"),
        ("nan", "publish: the message is not JSON: Out of range float values"),
        ("big", "publish: the message is 70009 bytes; at most 65536"),
    ],
)
async def test_a_bad_broadcast_fails_its_job_in_one_line_and_stores_nothing(
    world: World, bad: str, problem: str
) -> None:
    """Topic and message are checked before anything is written: the action fails with the
    one-line reason, and no broadcast event exists."""
    job = await world.engine.run_action("t.badcast", {"bad": bad})
    done = await world.engine.wait(job)
    assert done.state == "failed"
    assert problem in str(done.error) and "\n" not in str(done.error)
    assert await world.call("events", kind="broadcast.") == []
