"""A dispatch that cannot be built (its script vanished or no longer signs) ends its job."""

from __future__ import annotations

import trio
from trio.testing import MockClock

from wfe.engine.dispatch.controller import AgentController
from wfe.engine.repository import Repository, queries
from wfe.engine.runtime.jobs import Completions, JobState
from wfe.protocols.messages import Dispatch
from wfe.rscripts.loader import ScriptLibrary

from ..conftest import AGENTS, JOBS, FakeAgent


def refuse_to_sign(dispatch: Dispatch) -> Dispatch:
    raise ValueError("signing key unreadable")


async def test_a_dispatch_that_cannot_be_built_fails_its_job_at_once(
    autojump_clock: MockClock, repo: Repository, nursery: trio.Nursery
) -> None:
    """The job fails with the reason as soon as its dispatch fails to build, nothing is
    sent, and the agent's slot is free again: the attempt never reached the agent."""
    completions = Completions()
    controller = AgentController(
        repo=repo,
        scripts=ScriptLibrary.scan(),
        completions=completions,
        agents=AGENTS,
        jobs=JOBS,
        sign=refuse_to_sign,
    )
    await nursery.start(controller.run)
    agent = FakeAgent(controller, "a", slots=1)
    agent.connect()
    start = trio.current_time()
    job_id = await controller.submit("noop", {})
    done = await completions.wait(job_id, _never)
    assert trio.current_time() == start
    assert (done.state, done.error) == (
        JobState.FAILED,
        "cannot dispatch: signing key unreadable",
    )
    assert agent.of_type(Dispatch) == []
    assert controller.held_by("a") == []
    job = await repo.read(queries.job_detail(job_id))
    assert [a["state"] for a in job["attempt_list"]] == ["cancelled"]


async def _never() -> None:
    return None
