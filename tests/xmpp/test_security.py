"""Who may command a real agent, and whom the engine accepts, over a real Prosody."""

from __future__ import annotations

import contextlib
import logging
import time
import types
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

import attrs
import pytest
import trio

from wfe.engine.runtime.daemon import open_engine
from wfe.links.xmpp import MessageReceived, Online, PresenceReceived, XmppClient, open_xmpp_client
from wfe.protocols.messages import (
    Ack,
    AgentHello,
    Capabilities,
    Dispatch,
    FinishReason,
    JobAccepted,
    JobFinished,
    JobRefused,
    Limits,
    Message,
)
from wfe.protocols.signing import generate_keypair, load_private_key, sign
from wfe.protocols.xmpp import PresenceInfo
from wfe.rscripts.loader import ScriptLibrary

if TYPE_CHECKING:
    from conftest import Account, Cluster

pytestmark = pytest.mark.xmpp

T = TypeVar("T")


class Peer:
    """A test-side XMPP client that collects the messages it receives.

    With ``controller=True`` it answers agents' presence as a controller would, so an agent
    that obeys its JID opens a session with it.
    """

    def __init__(self, client: XmppClient, *, controller: bool) -> None:
        self.client = client
        self.controller = controller
        self.received: list[tuple[str, Message]] = []

    async def receive(self, kind: type[T]) -> tuple[str, T]:
        """The next message of type ``kind`` (others are kept in ``received``)."""
        while True:
            event = await self.client.events.receive()
            if isinstance(event, PresenceReceived) and self.controller and event.available:
                info = PresenceInfo(role="controller", instance=self.client.instance or "x")
                self.client.send_presence(event.sender, info)
            if isinstance(event, MessageReceived):
                self.received.append((event.sender, event.message))
                if isinstance(event.message, kind):
                    return event.sender, event.message


@contextlib.asynccontextmanager
async def peer(cluster: Cluster, account: Account, *, controller: bool) -> AsyncIterator[Peer]:
    async with open_xmpp_client(cluster.settings(account, resource="test")) as client:
        assert isinstance(await client.events.receive(), Online)
        yield Peer(client, controller=controller)


def noop_dispatch(job_id: str, **fields: Any) -> Dispatch:
    script = ScriptLibrary.scan().get("noop")
    fields.setdefault("issued", time.time())
    return Dispatch(
        job_id=job_id,
        attempt=1,
        script_name="noop",
        script=script.text,
        sha256=script.sha256,
        params={},
        limits=Limits(timeout=30.0),
        **fields,
    )


async def test_an_agent_obeys_only_its_controller_and_only_valid_dispatches(
    cluster: Cluster,
) -> None:
    """A real agent refuses dispatches from a JID it does not obey, unsigned, wrongly signed or
    stale ones, each with a JobRefused naming why, and runs a valid one from its controller."""
    private_pem, public_pem = generate_keypair()
    (cluster.root / "engine.pub").write_bytes(public_pem)
    key = load_private_key(private_pem)
    boss, stranger = cluster.new_account(cluster.server), cluster.new_account(cluster.server)
    with trio.fail_after(40):
        async with (
            peer(cluster, boss, controller=True) as ctl,
            peer(cluster, stranger, controller=False) as rogue,
        ):
            agent = await cluster.start_agent(controllers=(boss.jid,), slots=2)
            agent_jid, hello = await ctl.receive(AgentHello)
            assert hello.name == agent.jid and agent_jid.startswith(agent.jid + "/")

            rogue.client.send_message(agent_jid, sign(noop_dispatch("rogue-1"), key))
            _, refused = await rogue.receive(JobRefused)
            assert refused.job_id == "rogue-1"
            assert refused.reason == f"{stranger.jid} is not a controller this agent obeys"

            cases = {
                "unsigned": (noop_dispatch("unsigned"), "is unsigned"),
                "forged": (
                    attrs.evolve(sign(noop_dispatch("forged"), key), params={"injected": 1}),
                    "signature does not verify",
                ),
                "other-key": (
                    sign(noop_dispatch("other-key"), load_private_key(generate_keypair()[0])),
                    "signature does not verify",
                ),
                "stale": (
                    sign(noop_dispatch("stale", issued=time.time() - 3600), key),
                    "outside max_dispatch_age 300 s: a replay",
                ),
            }
            for job_id, (dispatch, why) in cases.items():
                assert dispatch.job_id == job_id
                ctl.client.send_message(agent_jid, dispatch)
                _, refused = await ctl.receive(JobRefused)
                assert refused.job_id == job_id and why in refused.reason, refused

            ctl.client.send_message(agent_jid, sign(noop_dispatch("good"), key))
            _, accepted = await ctl.receive(JobAccepted)
            _, finished = await ctl.receive(JobFinished)
            assert (accepted.job_id, finished.job_id) == ("good", "good")
            assert finished.reason is FinishReason.EXITED and finished.exit_code == 0
            ctl.client.send_message(agent_jid, Ack(job_id="good", attempt=1))
    ran = {m.job_id for _, m in ctl.received if isinstance(m, JobAccepted | JobFinished)}
    assert ran == {"good"}
    log = cluster.log(agent)
    assert f"refused dispatch rogue-1#1 from {stranger.jid}/test" in log
    assert "refused forged#1: dispatch forged#1: signature does not verify" in log


class _Waiter(logging.Handler):
    """Sets a trio.Event when a record containing ``text`` is logged (same thread as trio)."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text
        self.seen = trio.Event()
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if self.text in message:
            self.records.append(message)
            self.seen.set()


@contextlib.contextmanager
def logged(text: str) -> Iterator[_Waiter]:
    waiter = _Waiter(text)
    logger = logging.getLogger("wfe.xmpp")
    logger.addHandler(waiter)
    old, logger.level = logger.level, logging.INFO
    try:
        yield waiter
    finally:
        logger.removeHandler(waiter)
        logger.level = old


async def test_the_engine_accepts_only_its_configured_agents(cluster: Cluster) -> None:
    """An agent JID not in xmpp.agents is refused with a logged line and never registered."""
    listed, stranger = cluster.new_account(cluster.server), cluster.new_account(cluster.server)
    config = cluster.config(xmpp_agents=[listed.jid])
    with trio.fail_after(30), logged(f"refused a AgentHello from {stranger.jid}/test") as refusal:
        async with (
            open_engine(config) as engine,
            peer(cluster, stranger, controller=False) as rogue,
        ):
            engine_jid = f"{cluster.engine.jid}/wfe-engine"
            hello = AgentHello(name="rogue", software="x", capabilities=Capabilities(slots=4))
            rogue.client.send_message(engine_jid, hello)
            await refusal.seen.wait()
            assert all(a["name"] != stranger.jid for a in engine.agents())
    assert refusal.records == [
        f"xmpp: refused a AgentHello from {stranger.jid}/test: not an agent this engine accepts"
    ]


@pytest.mark.parametrize(
    ("agents", "jid", "accepted"),
    [
        ((), "agent1@wfe.example.org/wfe", True),
        ((), "Agent1@WFE.example.org/wfe", True),
        ((), "agent1@elsewhere.org/wfe", False),
        ((), "engine@wfe.example.org/other", False),
        (("agent1@wfe.example.org",), "agent1@wfe.example.org/wfe", True),
        (("agent1@wfe.example.org",), "agent2@wfe.example.org/wfe", False),
        (("agent1@elsewhere.org",), "agent1@elsewhere.org/wfe", True),
    ],
)
def test_which_jids_the_engine_accepts(agents: tuple[str, ...], jid: str, accepted: bool) -> None:
    """Configured agents only; with none configured, any JID of the engine's domain but its own."""
    from wfe.engine.transports.xmpp import XmppTransport

    client: Any = types.SimpleNamespace(
        settings=types.SimpleNamespace(jid="engine@wfe.example.org")
    )
    transport = XmppTransport(controller=None, client=client, agents=agents)  # type: ignore[arg-type]
    assert transport.accepts(jid) is accepted
