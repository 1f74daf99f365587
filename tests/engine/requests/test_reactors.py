"""Reactors: a broadcast reaches the agents of its namespace that react to its topic, and a
definition's ``[reactors]`` start an action per broadcast; a broadcast is recorded once."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import trio

from wfe.engine.repository import broadcasts

from .conftest import PATIENCE, World, open_world
from .test_broadcasts import ANNOUNCE

#: Each reactor run appends one line (agent, broadcast number, message) to $MARKS: counted
#: outside the engine's books.
REACTOR = """\
printf '%s %s %s\\n' "$WFE_AGENT_GROUP" "$WFE_BROADCAST" "$(cat "$WFE_PARAMS")" >> "$MARKS"
"""

GROUPS = """
[agents.near]
count = 1
namespace = "tests"
reactors = {{ stf_gen = "{near}" }}

[agents.far]
count = 1
namespace = "elsewhere"
reactors = {{ stf_gen = "{far}" }}
"""


async def _agents(world: World, names: set[str]) -> None:
    """Wait until the agents ``names`` are connected (checked after every committed event)."""

    def connected() -> bool:
        return names <= {n for n, a in world.engine.controller.agents.items() if a.link}

    with trio.fail_after(PATIENCE):
        async with world.engine.repo.subscribe() as events:
            while not connected():
                await events.__anext__()


async def _events(world: World, kind: str, count: int) -> list[dict[str, Any]]:
    """The stored events of ``kind`` once there are ``count`` of them."""
    with trio.fail_after(PATIENCE):
        async with world.engine.repo.subscribe() as events:
            while len(found := await world.call("events", kind=kind)) < count:
                await events.__anext__()
    return found


@pytest.fixture
async def grouped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """An engine with a group in namespace "tests" and one in "elsewhere", each reacting to
    ``stf_gen`` with a script that marks $MARKS with its group."""
    ws = tmp_path / "ws"
    ws.mkdir()
    for group in ("near", "far"):
        (ws / f"{group}.sh").write_text(f"WFE_AGENT_GROUP={group}\n" + REACTOR)
    monkeypatch.setenv("MARKS", str(tmp_path / "marks"))
    extra = GROUPS.format(near="near.sh", far="far.sh")
    async with open_world(tmp_path, extra_config=extra) as world:
        await _agents(world, {"near-1", "far-1"})
        yield world, tmp_path / "marks"


async def test_an_agent_reacts_to_its_namespace_only_and_the_reaction_is_recorded(
    grouped,
) -> None:
    """The request in namespace "tests" publishes once: the "near" agent's reactor runs once
    with the message; the "far" agent (namespace "elsewhere") runs nothing; the engine
    records ``reaction.ended`` with the exit code."""
    world, marks = grouped
    await world.catalog(["a.dat", "b.dat"])
    record = await world.submit(world.definition(ANNOUNCE))
    assert (await world.wait(record["id"]))["state"] == "completed"
    [reaction] = await _events(world, "reaction.ended", 1)
    assert reaction["subject"] == "near-1"
    assert reaction["data"]["exit_code"] == 0
    assert reaction["data"]["namespace"] == "tests"
    [published] = await world.call("events", kind="broadcast.")
    assert reaction["data"]["number"] == published["data"]["number"]
    lines = marks.read_text().splitlines()
    assert len(lines) == 1
    group, number, message = lines[0].split(" ", 2)
    assert (group, int(number)) == ("near", published["data"]["number"])
    assert json.loads(message) == {"inputs": 2, "seq": 1}


async def test_a_definitions_reactor_starts_an_action_with_the_message(world: World) -> None:
    """``[reactors] stf_gen = "t.react"``: the broadcast starts ``t.react`` as a child of the
    publishing job, with the message as its parameters; the request completes after it."""
    await world.catalog(["a.dat"])
    text = ANNOUNCE + '\n[reactors]\nstf_gen = "t.react"\n'
    record = await world.submit(world.definition(text))
    assert (await world.wait(record["id"]))["state"] == "completed"
    [published] = await world.call("events", kind="broadcast.")
    tree = await world.call("job", job=published["subject"])
    [child] = [c for c in tree["children"] if c["name"] == "t.react"]
    reaction = await world.call("job", job=child["id"])
    assert reaction["state"] == "succeeded"
    assert reaction["result"] == {"results": {"reacted_to": {"inputs": 1, "seq": 1}}}


async def test_a_reactor_naming_an_unknown_action_is_refused_at_submit(world: World) -> None:
    """The definition is refused in one line naming the reactor; nothing is submitted."""
    text = ANNOUNCE + '\n[reactors]\nstf_gen = "t.nothing"\n'
    with pytest.raises(Exception, match=r"reactors\.stf_gen: unknown action 't\.nothing'"):
        await world.submit(world.definition(text))
    assert await world.call("requests") == []


async def test_a_replayed_publish_records_nothing_twice(world: World) -> None:
    """The write op of one (job, call) publishes once: the second time (a tasklet replayed
    after a restart) it returns None and no second event is stored."""
    op = broadcasts.publish("stf_gen", {"n": 1}, namespace="tests", job="j-1", call_seq=3)
    first = await world.engine.repo.write(op)
    again = await world.engine.repo.write(op)
    other = await world.engine.repo.write(
        broadcasts.publish("stf_gen", {"n": 2}, namespace="tests", job="j-1", call_seq=4)
    )
    assert (again, other) == (None, first + 1)
    stored = await world.call("events", kind="broadcast.")
    assert [e["data"]["number"] for e in stored] == [first, other]
