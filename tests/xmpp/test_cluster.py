"""An engine and real agent processes over a real Prosody: the done-means of the XMPP transport."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import pytest
import trio

from engine.daemon import Engine, open_engine

if TYPE_CHECKING:
    from conftest import Cluster

pytestmark = pytest.mark.xmpp


async def until(engine: Engine, predicate: Callable[[], bool]) -> None:
    """Wait until ``predicate()`` holds, checking it after every committed event."""
    async with engine.repo.subscribe() as events:
        while not predicate():
            await events.__anext__()


def connected(engine: Engine) -> list[str]:
    """Names of the agents connected over XMPP."""
    return [
        a["name"] for a in engine.agents() if a["state"] == "connected" and a["transport"] == "xmpp"
    ]


async def succeeded_once(engine: Engine, job_ids: list[str]) -> None:
    """Every job succeeded, with exactly one succeeded attempt in the repository."""
    for job_id in job_ids:
        job = await engine.job(job_id)
        states = [a["state"] for a in job["attempt_list"]]
        assert job["state"] == "succeeded", (job_id, job["error"], states)
        assert states.count("succeeded") == 1, (job_id, states)


async def run_all(engine: Engine, job_ids: list[str]) -> None:
    async with trio.open_nursery() as nursery:
        for job_id in job_ids:
            nursery.start_soon(engine.wait, job_id)


async def test_a_hundred_jobs_on_three_agents_survive_a_sigkilled_agent(cluster: Cluster) -> None:
    """100 jobs on 3 agents over Prosody all succeed exactly once though one agent is SIGKILLed."""
    config = cluster.config()
    with trio.fail_after(90):
        async with open_engine(config) as engine:
            accounts = [await cluster.start_agent() for _ in range(3)]
            await until(engine, lambda: len(connected(engine)) == 3)
            job_ids = [
                await engine.run_rscript("sleep_echo", {"message": f"job {n}", "seconds": 0.3})
                for n in range(100)
            ]
            victim = accounts[0].jid
            await until(engine, lambda: engine.controller.statistics()["queued"] <= 60)
            await until(
                engine, lambda: any(a["name"] == victim and a["running"] for a in engine.agents())
            )
            cluster.kill(victim)
            await run_all(engine, job_ids)
            await succeeded_once(engine, job_ids)
            lost = [
                a
                for j in job_ids
                for a in (await engine.job(j))["attempt_list"]
                if a["state"] == "lost"
            ]
            assert lost and all(a["agent"] == victim for a in lost)
            output = await engine.output(job_ids[-1])
            assert output == b"job 99\n"
