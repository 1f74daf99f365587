"""Pausing a request holds back its jobs that wait to be retried: they are not dispatched
again while it is paused, their inputs are withdrawn, and resuming runs them anew.

The engine's retry backoff is long (``BACKOFF``), so a job that escaped the pause would be
dispatched again long after the test has seen it cancelled, and a test without the fix
fails by timing out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from wfe.engine.repository import open_repository
from wfe.engine.requests import prepare
from wfe.rscripts.loader import ScriptLibrary

from .conftest import HEAD, PATIENCE, World, open_world

BACKOFF = PATIENCE * 2

FLAKY = (
    HEAD
    + """
[params.flaky]
type = "str"
default = ""

[params.gate]
type = "str"
default = ""

[[stages]]
name = "a"
rscript = "work"
consumes = "query"
retries = 2
params = { flaky = "${flaky}", gate = "${gate}" }
"""
)


async def job_of(world: World, rid: str) -> dict[str, Any]:
    """The request's one job, as `status JOB` shows it, once it exists."""

    async def check() -> Any:
        jobs = (await world.detail(rid))["jobs"]
        return jobs[0]["job"] if jobs else None

    job_id = await world.until(f"a job of {rid}", check)
    return await world.call("status", job=job_id)  # type: ignore[no-any-return]


async def inputs_of(world: World, rid: str) -> dict[str, int]:
    return (await world.detail(rid))["stages"][0]["inputs"]  # type: ignore[no-any-return]


async def held_then_resumed(world: World, rid: str, job_id: str) -> None:
    """The job is cancelled with one attempt, its input withdrawn; after resume a new job
    processes the input and the request completes."""

    async def cancelled_or_tried_again() -> Any:
        job = await world.call("status", job=job_id)
        return (job["state"] == "cancelled" or len(job["attempt_list"]) > 1) and job

    job = await world.until(f"{job_id} cancelled or tried again", cancelled_or_tried_again)
    assert job["state"] == "cancelled", job
    assert [a["attempt"] for a in job["attempt_list"]] == [1]  # never dispatched again

    async def settled() -> Any:
        [batch] = (await world.detail(rid))["jobs"]
        return batch["outcome"] is not None and batch

    batch = await world.until("its batch settled", settled)
    assert (batch["outcome"], batch["stop"]) == ("withdrawn", "request paused")
    assert await inputs_of(world, rid) == {"unallocated": 1}
    assert (await world.detail(rid))["state"] == "paused"

    await world.call("resume", request=rid)
    assert (await world.wait(rid))["state"] == "completed"
    jobs = (await world.detail(rid))["jobs"]
    assert [(j["job"] == job_id, j["outcome"]) for j in jobs] == [
        (True, "withdrawn"),
        (False, "processed"),
    ]


async def test_a_job_waiting_to_retry_is_held_by_a_pause(tmp_path: Path) -> None:
    """A job whose first attempt failed and that waits out its backoff when the request is
    paused is cancelled, not dispatched again."""
    async with open_world(tmp_path, backoff=BACKOFF) as world:
        (world.root / "flaky").mkdir()
        await world.catalog(["r1.dat"])
        rid = (await world.submit(world.definition(FLAKY), flaky=world.root / "flaky"))["id"]
        job_id = (await job_of(world, rid))["id"]

        async def waiting_to_retry() -> Any:
            job = await world.call("status", job=job_id)
            return [a["state"] for a in job["attempt_list"]] == ["failed"] and job["state"]

        assert await world.until("a failed first attempt", waiting_to_retry) == "queued"
        await world.call("pause", request=rid)
        await held_then_resumed(world, rid, job_id)


async def test_a_job_that_fails_while_paused_is_not_retried_until_resume(
    tmp_path: Path,
) -> None:
    """A job running when the request is paused runs on; when its attempt fails during the
    pause, it is cancelled instead of being retried."""
    async with open_world(tmp_path, backoff=BACKOFF) as world:
        (world.root / "flaky").mkdir()
        await world.catalog(["r1.dat"])
        path = world.definition(FLAKY)
        rid = (await world.submit(path, flaky=world.root / "flaky", gate=world.gate))["id"]
        running = await world.job_running(rid)
        await world.call("pause", request=rid)
        assert (await world.call("status", job=running["job"]))["state"] == "running"
        world.open_gate()  # the attempt fails (flaky), during the pause
        await held_then_resumed(world, rid, running["job"])


async def test_a_job_that_fails_while_paused_with_no_backoff_is_not_retried(
    tmp_path: Path,
) -> None:
    """With ``[jobs] backoff = 0`` the controller requeues a failed attempt at once; while the
    request is paused the job is still not dispatched again, but cancelled."""
    async with open_world(tmp_path, backoff=0.0) as world:
        (world.root / "flaky").mkdir()
        await world.catalog(["r1.dat"])
        path = world.definition(FLAKY)
        rid = (await world.submit(path, flaky=world.root / "flaky", gate=world.gate))["id"]
        running = await world.job_running(rid)
        await world.call("pause", request=rid)
        world.open_gate()  # the attempt fails (flaky), during the pause
        await held_then_resumed(world, rid, running["job"])


async def test_a_restarted_engine_holds_a_paused_request_before_it_recovers_jobs(
    tmp_path: Path,
) -> None:
    """`prepare`, which runs before the controller recovers jobs and before any agent is
    started, has the controller hold every paused request (and only those): none of their
    jobs can be dispatched before the requests service's first step."""
    async with open_world(tmp_path) as world:
        await world.catalog(["r1.dat"])
        paused = (await world.submit(world.definition(FLAKY), flaky=world.root / "none"))["id"]
        await job_of(world, paused)  # running: it can be paused
        await world.call("pause", request=paused)
        assert (await world.detail(paused))["state"] == "paused"
        repository = world.engine.config.repository_path

    class Holds:
        def __init__(self) -> None:
            self.held: list[str] = []

        def hold_request(self, rid: str) -> None:
            self.held.append(rid)

    holds = Holds()
    async with open_repository(repository) as repo:
        await prepare(repo, ScriptLibrary(), holds)  # type: ignore[arg-type]
    assert holds.held == [paused]
