"""An agent's reactors: the engine sends a ``Broadcast`` and the agent runs the script its
configuration maps the topic to, with the message as parameters, once per broadcast number,
and reports how it ended with a ``Reacted``."""

from __future__ import annotations

import json
from pathlib import Path

import trio

from wfe.agents.reactors import Reactors
from wfe.protocols.messages import Broadcast, Capabilities, Reacted

REACTOR = """\
# interpreter: python3
import json, os, sys
message = json.load(sys.stdin)
with open(os.environ["MARKS"], "a") as marks:
    marks.write(json.dumps({"topic": os.environ["WFE_TOPIC"], "n": os.environ["WFE_BROADCAST"],
                            "namespace": os.environ["WFE_NAMESPACE"], "message": message}) + "\\n")
with open(os.environ["WFE_RESULT"], "w") as result:
    json.dump({"doubled": message["sequence"] * 2}, result)
if message.get("fail"):
    print("the detector is on fire", file=sys.stderr)
    sys.exit(3)
"""


def reactor_agent(agents, tmp_path: Path, monkeypatch) -> tuple[object, Path]:
    """An agent with a reactor for ``stf_gen`` that appends each message it gets to a file
    outside the engine's books."""
    script = tmp_path / "react.py"
    script.write_text(REACTOR)
    marks = tmp_path / "marks.jsonl"
    monkeypatch.setenv("MARKS", str(marks))
    reactors = Reactors(
        {"stf_gen": script}, spool=agents.spool_path, workdir=agents.workdir, slots=2
    )
    capabilities = Capabilities(slots=2, namespace="daq", topics=reactors.topics)
    return agents.build(capabilities=capabilities, reactors=reactors), marks


def marks_of(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def stf(seq: int, sequence: int, **more: object) -> Broadcast:
    return Broadcast(
        seq=seq, namespace="daq", topic="stf_gen", message={"sequence": sequence, **more}
    )


async def test_a_broadcast_runs_its_reactor_with_the_message_and_reports_it(
    agents, engine, h, tmp_path: Path, monkeypatch
) -> None:
    """The hello says the namespace and topics; the reactor gets the message on stdin and
    the topic, number and namespace in its environment; ``Reacted`` carries its exit code
    and the JSON it wrote; a failing one's detail is its stderr's last line."""
    agent, marks = reactor_agent(agents, tmp_path, monkeypatch)
    agents.start(agent)
    link = await engine.accept()
    hello = await h.receive(link)
    assert (hello.capabilities.namespace, hello.capabilities.topics) == ("daq", ("stf_gen",))
    await link.send(stf(7, 21))
    reacted = await h.receive(link)
    assert isinstance(reacted, Reacted)
    assert (reacted.seq, reacted.topic, reacted.exit_code) == (7, "stf_gen", 0)
    assert reacted.result == {"doubled": 42}
    assert marks_of(marks) == [
        {"topic": "stf_gen", "n": "7", "namespace": "daq", "message": {"sequence": 21}}
    ]
    await link.send(stf(8, 1, fail=True))
    failed = await h.receive(link)
    assert (failed.seq, failed.exit_code, failed.detail) == (8, 3, "the detector is on fire")


async def test_a_broadcast_delivered_again_does_not_run_again_even_after_a_restart(
    agents, engine, h, tmp_path: Path, monkeypatch
) -> None:
    """Number 5 sent twice runs once; after the agent restarts on the same spool, 5 and 4 are
    still ignored and 6 runs: counted in the file the reactor writes, not in the agent."""
    agent, marks = reactor_agent(agents, tmp_path, monkeypatch)
    agents.start(agent)
    link = await engine.accept()
    await h.receive(link)
    await link.send(stf(5, 1))
    await link.send(stf(5, 1))
    assert (await h.receive(link)).seq == 5
    agent.stop()
    await agents.done.wait()
    again, _ = reactor_agent(agents, tmp_path, monkeypatch)
    agents.done = trio.Event()
    agents.start(again)
    link = await engine.accept()
    await h.receive(link)
    for seq in (5, 4, 6):
        await link.send(stf(seq, seq))
    assert (await h.receive(link)).seq == 6
    assert [m["n"] for m in marks_of(marks)] == ["5", "6"]


async def test_a_topic_without_a_reactor_runs_nothing(
    agents, engine, h, tmp_path: Path, monkeypatch
) -> None:
    """A broadcast on another topic is ignored: the next one that has a reactor is the first
    thing reported."""
    agent, marks = reactor_agent(agents, tmp_path, monkeypatch)
    agents.start(agent)
    link = await engine.accept()
    await h.receive(link)
    await link.send(Broadcast(seq=1, namespace="daq", topic="end_run", message={}))
    await link.send(stf(2, 2))
    assert (await h.receive(link)).seq == 2
    assert [m["topic"] for m in marks_of(marks)] == ["stf_gen"]
