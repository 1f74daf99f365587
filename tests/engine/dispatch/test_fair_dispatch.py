"""Fair share through the real controller, on a MockClock: two users with a 10x difference in
backlog get slots in proportion to their weights while both have work queued; and a request's
jobs carry its namespace and user."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from wfe.engine.config import FairShareSection
from wfe.engine.dispatch.controller import AgentController
from wfe.engine.repository import Repository
from wfe.engine.runtime.jobs import Completions
from wfe.protocols.messages import Dispatch
from wfe.rscripts.loader import ScriptLibrary

from ..conftest import AGENTS, JOBS, FakeAgent

SLOTS = 4
RUN = 1.0  # virtual seconds each attempt runs


async def dispatch_order(
    repo: Repository, nursery: trio.Nursery, backlog: dict[str, int], weights: dict[str, float]
) -> list[str]:
    """Queue ``backlog[user]`` jobs per user before any agent connects, then let one agent of
    ``SLOTS`` slots run them all (each for ``RUN`` virtual seconds); return the user of each
    dispatch, in order."""
    controller = AgentController(
        repo=repo,
        scripts=ScriptLibrary.scan(),
        completions=Completions(),
        agents=AGENTS,
        jobs=JOBS,
        fair_share=FairShareSection(users=weights),
    )
    await nursery.start(controller.run)
    owner: dict[str, str] = {}
    for user, count in backlog.items():
        for _ in range(count):
            job = await controller.submit("noop", {}, by=user)
            owner[job] = user
    agent = FakeAgent(controller, "a1", slots=SLOTS)
    agent.connect()
    order: list[str] = []

    async def run(d: Dispatch) -> None:
        agent.accept(d)
        await trio.sleep(RUN)
        agent.finish(d)

    async with trio.open_nursery() as runs:
        seen = 0
        while seen < len(owner):
            for d in (await agent.receive(Dispatch, seen + 1))[seen:]:
                order.append(owner[d.job_id])
                runs.start_soon(run, d)
                seen += 1
    return order


def while_both_wait(order: list[str], small: str) -> list[str]:
    """The dispatches up to the last one of the smaller backlog's user (both had work)."""
    last = max(i for i, user in enumerate(order) if user == small)
    return order[: last + 1]


@pytest.mark.parametrize(
    ("weights", "bob_share"),
    [({}, 0.5), ({"alice": 3.0}, 0.25)],
    ids=["equal", "alice-3x"],
)
async def test_two_backlogs_get_slots_by_weight_not_by_size(
    repo: Repository,
    nursery: trio.Nursery,
    autojump_clock: trio.testing.MockClock,
    weights: dict[str, float],
    bob_share: float,
) -> None:
    """alice queues 200 jobs, bob 20 (10x less). While both wait, bob gets his weight's portion
    of the dispatches (half with equal weights, a quarter when alice weighs 3), within 10%;
    without fair share he would wait behind all of alice's jobs."""
    order = await dispatch_order(repo, nursery, {"alice": 200, "bob": 20}, weights)
    assert len(order) == 220
    both = while_both_wait(order, "bob")
    assert both.count("bob") == 20
    assert abs(both.count("bob") / len(both) - bob_share) <= 0.1 * bob_share + 1 / len(both)


async def test_one_user_keeps_priority_then_age(
    repo: Repository, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """With a single share nothing changes: jobs go in priority order, then in the order they
    were queued."""
    controller = AgentController(
        repo=repo,
        scripts=ScriptLibrary.scan(),
        completions=Completions(),
        agents=AGENTS,
        jobs=JOBS,
        fair_share=FairShareSection(),
    )
    await nursery.start(controller.run)
    jobs = [await controller.submit("noop", {}, priority=p, by="alice") for p in (0, 5, 0, 5)]
    agent = FakeAgent(controller, "a1", slots=4)
    agent.connect()
    dispatched = [d.job_id for d in await agent.receive(Dispatch, 4)]
    assert dispatched == [jobs[1], jobs[3], jobs[0], jobs[2]]


async def test_a_requests_jobs_carry_its_namespace_and_user(tmp_path: Any) -> None:
    """A stage's job is shared as its request's (namespace, user): the share is stored with
    the job, so it holds after a restart too."""
    from tests.engine.requests.conftest import HEAD, open_world

    async with open_world(tmp_path / "world") as world:
        await world.catalog(["obs_1.dat"])
        definition = world.definition(
            HEAD + '\n[[stages]]\nname = "a"\nrscript = "work"\nconsumes = "query"\n'
        )
        record = await world.submit(definition, user="carol", namespace="survey.deep")
        done = await world.wait(record["id"])
        assert done["state"] == "completed", done.get("error")
        [job] = [j for j in await world.engine.jobs() if j["kind"] == "rscript"]
        detail = await world.engine.job(str(job["id"]))
        assert detail["requirements"]["share"] == ["survey.deep", "carol"]
