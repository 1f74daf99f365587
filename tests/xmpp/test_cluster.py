"""An engine and real agent processes over a real Prosody: the done-means of the XMPP transport."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import attrs
import pytest
import trio

from wfe.engine.devtools.prosody import ProsodyServer
from wfe.engine.runtime.daemon import open_engine
from wfe.engine.transports.xmpp import XmppLoginRefused

if TYPE_CHECKING:
    from conftest import Cluster

pytestmark = pytest.mark.xmpp


async def test_a_hundred_jobs_on_three_agents_survive_a_sigkilled_agent(
    cluster: Cluster, h: Any
) -> None:
    """100 jobs on 3 agents over Prosody all succeed exactly once though one agent is SIGKILLed."""
    config = cluster.config()
    with trio.fail_after(90):
        async with open_engine(config) as engine:
            accounts = [await cluster.start_agent() for _ in range(3)]
            await h.until(engine, lambda: len(h.connected(engine)) == 3)
            job_ids = [
                await engine.run_rscript("sleep_echo", {"message": f"job {n}", "seconds": 0.3})
                for n in range(100)
            ]
            victim = accounts[0].jid
            await h.until(engine, lambda: engine.controller.statistics()["queued"] <= 60)
            await h.until(
                engine, lambda: any(a["name"] == victim and a["running"] for a in engine.agents())
            )
            cluster.kill(victim)
            await h.run_all(engine, job_ids)
            await h.succeeded_once(engine, job_ids)
            lost = [
                a
                for j in job_ids
                for a in (await engine.job(j))["attempt_list"]
                if a["state"] == "lost"
            ]
            assert lost and all(a["agent"] == victim for a in lost)
            output = await engine.output(job_ids[-1])
            assert output == b"job 99\n"


async def test_a_20_mb_output_arrives_whole(cluster: Cluster, h: Any) -> None:
    """20 MB printed by a script on an XMPP agent is stored by the engine byte for byte."""
    config = cluster.config()
    size = 20_000_000
    with trio.fail_after(90):
        async with open_engine(config) as engine:
            await cluster.start_agent(slots=1)
            await h.until(engine, lambda: len(h.connected(engine)) == 1)
            job_id = await engine.run_rscript("bigoutput", {"size": size})
            await h.run_all(engine, [job_id])
            (job,) = await h.succeeded_once(engine, [job_id])
            output = await engine.output(job_id)
    assert len(output) == size
    assert hashlib.sha256(output).hexdigest() == job["result"]["results"]["sha256"]


async def test_engine_and_agents_connect_with_verified_starttls(
    prosody_tls: ProsodyServer, cluster_factory: Callable[[ProsodyServer], Cluster], h: Any
) -> None:
    """Against a server that requires STARTTLS, engine and agent verify its certificate with the
    test CA (ca_file), log in and run jobs; an agent without the CA refuses the server and exits
    1 with one line saying why."""
    cluster = cluster_factory(prosody_tls)
    config = cluster.config()
    assert config.xmpp.tls == "starttls" and config.xmpp.ca_file
    with trio.fail_after(60):
        async with open_engine(config) as engine:
            await cluster.start_agent()
            await h.until(engine, lambda: len(h.connected(engine)) == 1)
            job_ids = [await engine.run_rscript("noop", {}) for _ in range(5)]
            await h.run_all(engine, job_ids)
            await h.succeeded_once(engine, job_ids)
        account = cluster.new_account(prosody_tls)
        command = cluster.agent_command(account)
        at = command.index("--ca-file")
        del command[at : at + 2]
        result = await trio.run_process(
            command, capture_stdout=True, capture_stderr=True, check=False
        )
    assert result.returncode == 1
    last = result.stderr.decode().strip().splitlines()[-1]
    assert last.startswith(
        f"agent {account.jid}: xmpp: {account.jid}: the server's certificate does not verify"
        " against the system's CAs (set ca_file for a private CA): "
    ), last


async def test_an_engine_refused_by_the_server_stops_saying_why(cluster: Cluster) -> None:
    """A wrong engine password stops open_engine with XmppLoginRefused, one line naming the fix."""
    config = cluster.config()
    cluster.write_password(attrs.evolve(cluster.engine, password="not-the-password"))
    with trio.fail_after(30), pytest.raises(BaseExceptionGroup) as caught:
        async with open_engine(config):
            await trio.sleep_forever()
    refused = caught.value.subgroup(XmppLoginRefused)
    assert refused is not None
    (error,) = _leaves(refused)
    assert (
        str(error)
        == f"xmpp: {cluster.engine.jid}: authentication failed: check the JID and the password file"
    )


def _leaves(error: BaseException) -> list[BaseException]:
    if isinstance(error, BaseExceptionGroup):
        return [leaf for e in error.exceptions for leaf in _leaves(e)]
    return [error]
