"""Broadcasts over XMPP: an agent in namespace A hears A's broadcasts and runs its reactor; an
agent in namespace B hears none of them (the issue's done-means, with real agent processes
over a real Prosody)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import trio

from wfe.engine.runtime.daemon import open_engine

if TYPE_CHECKING:
    from conftest import Cluster

pytestmark = pytest.mark.xmpp

ACTIONS = Path(__file__).parents[1] / "engine" / "requests" / "actions"  # t.announce

#: Each run appends the namespace, the broadcast's number and its message to the file named by
#: its argument: counted outside the engine's books.
REACTOR = """\
printf '%s %s %s\\n' "$WFE_NAMESPACE" "$WFE_BROADCAST" "$(cat "$WFE_PARAMS")" >> {marks}
"""


def announcing(namespace: str) -> dict[str, Any]:
    """A definition in ``namespace`` whose one stage publishes once on ``stf_gen``."""
    return {
        "workflow": {"name": "announce", "namespace": namespace},
        "policy": {"approval": "none"},
        "stages": [{"name": "announce", "action": "t.announce"}],
    }


async def test_an_agent_hears_its_namespace_only(cluster: Cluster, h: Any, tmp_path: Path) -> None:
    """Two requests publish, one in "A" and one in "B"; the agent in "A" runs its reactor once,
    for A's broadcast only; the agent in "B" once, for B's; each reaction is recorded by the
    engine with the agent's name."""
    config = cluster.config(engine={"actions": [str(ACTIONS)]})
    scripts = {}
    for namespace in ("A", "B"):
        scripts[namespace] = tmp_path / f"react-{namespace}.sh"
        scripts[namespace].write_text(REACTOR.format(marks=tmp_path / f"marks-{namespace}"))
    with trio.fail_after(90):
        async with open_engine(config) as engine:
            agents = {
                namespace: await cluster.start_agent(
                    None, "--namespace", namespace, "--reactor", f"stf_gen={scripts[namespace]}"
                )
                for namespace in ("A", "B")
            }
            await h.until(engine, lambda: len(h.connected(engine)) == 2)
            assert engine.requests is not None
            async with engine.repo.subscribe() as events:
                for namespace in ("A", "B"):
                    await engine.requests.submit(expanded=announcing(namespace), user="alice")
                reactions = 0
                async for event in events:
                    reactions += getattr(event, "kind", "") == "reaction.ended"
                    if reactions == 2:
                        break
            published = await engine.events(after=0, limit=100, kind="broadcast.")
            ended = await engine.events(after=0, limit=100, kind="reaction.ended")
    numbers = {e.data["namespace"]: e.data["number"] for e in published}
    assert sorted(numbers) == ["A", "B"]
    by_agent = {e.subject: e.data for e in ended}
    for namespace, account in agents.items():
        data = by_agent[account.jid]
        assert (data["namespace"], data["number"], data["exit_code"]) == (
            namespace,
            numbers[namespace],
            0,
        )
        [line] = (tmp_path / f"marks-{namespace}").read_text().splitlines()
        heard, number, message = line.split(" ", 2)
        assert (heard, int(number)) == (namespace, numbers[namespace])
        assert json.loads(message) == {"inputs": 0, "seq": 1}
