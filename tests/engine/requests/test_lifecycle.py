"""The request lifecycle through the real engine API: approval, pause, resume, cancel,
archive, and every illegal verb refused naming the state."""

from __future__ import annotations

from pathlib import Path

import pytest

from wfe.engine.cli.client import ClientError

from .conftest import HEAD, World, open_world

ONE_STAGE = (
    HEAD
    + """
[params.gate]
type = "str"
default = ""

[[stages]]
name = "a"
rscript = "work"
consumes = "query"
max_inputs = 1
params = { gate = "${gate}" }
"""
)


async def refused(world: World, verb: str, rid: str) -> str:
    with pytest.raises(ClientError) as info:
        await world.call(verb, request=rid)
    return str(info.value)


def history(detail: dict) -> list[tuple[str, str, str]]:
    return [
        (h["verb"], h["actor"], h["to"]) for h in detail["history"] if h["kind"] == "request.state"
    ]


async def test_approval_required_waits_for_an_operator(world: World) -> None:
    """With approval required the request stays submitted until an operator approves;
    then it runs, is checked, completes, and can be archived. Illegal verbs on the way are
    refused naming the state, and change nothing."""
    await world.catalog(["r1.dat", "r2.dat"])
    path = world.definition(ONE_STAGE.replace('approval = "none"', 'approval = "required"'))
    record = await world.submit(path)
    rid = record["id"]
    assert rid == "t-alice-0001"
    assert record["state"] == "submitted"
    for verb in ("pause", "resume", "archive"):
        assert await refused(world, verb, rid) == f"request {rid}: can't {verb} in state SUBMITTED"
    assert (await world.detail(rid))["state"] == "submitted"  # the engine did not approve
    result = await world.call("approve", request=rid)
    assert (result["from"], result["state"]) == ("submitted", "approved")
    done = await world.wait(rid)
    assert done["state"] == "completed"
    assert (
        await refused(world, "approve", rid) == f"request {rid}: can't approve in state COMPLETED"
    )
    assert await refused(world, "pause", rid) == f"request {rid}: can't pause in state COMPLETED"
    assert await refused(world, "cancel", rid) == f"request {rid}: can't cancel in state COMPLETED"
    assert (await world.call("archive", request=rid))["state"] == "archived"
    for verb in ("approve", "pause", "resume", "cancel", "archive"):
        assert await refused(world, verb, rid) == f"request {rid}: can't {verb} in state ARCHIVED"
    detail = await world.detail(rid)
    assert history(detail) == [
        ("submit", "user", "submitted"),
        ("approve", "operator", "approved"),
        ("start", "engine", "running"),
        ("check", "engine", "checking"),
        ("complete", "engine", "completed"),
        ("archive", "operator", "archived"),
    ]
    assert detail["stages"] == [
        {"name": "a", "state": "done", "error": None, "inputs": {"processed": 2}}
    ]


async def test_the_engine_approves_by_policy(world: World) -> None:
    """With approval "none" the engine approves at once; ids count per workflow and user."""
    await world.catalog(["r1.dat"])
    path = world.definition(ONE_STAGE)
    first = await world.submit(path)
    second = await world.submit(path, user="bob")
    third = await world.submit(path)
    assert [first["id"], second["id"], third["id"]] == [
        "t-alice-0001",
        "t-bob-0001",
        "t-alice-0002",
    ]
    for rid in (first["id"], second["id"], third["id"]):
        assert (await world.wait(rid))["state"] == "completed"
    assert history(await world.detail(first["id"]))[:3] == [
        ("submit", "user", "submitted"),
        ("approve", "engine", "approved"),
        ("start", "engine", "running"),
    ]
    listed = await world.call("requests")
    assert [r["id"] for r in listed] == ["t-alice-0002", "t-bob-0001", "t-alice-0001"]
    assert {r["state"] for r in listed} == {"completed"}


async def test_pause_lets_running_jobs_finish_and_dispatches_nothing(tmp_path: Path) -> None:
    """Pause: the running job finishes, queued jobs are withdrawn (their inputs go back
    without counting an allocation) and nothing new starts; resume runs the rest."""
    async with open_world(tmp_path, slots=1) as world:  # one slot: one job at a time
        await world.catalog(["r1.dat", "r2.dat", "r3.dat", "r4.dat"])
        path = world.definition(ONE_STAGE)
        rid = (await world.submit(path, gate=world.gate))["id"]
        running = await world.job_running(rid)
        assert (await world.call("pause", request=rid))["state"] == "paused"
        assert await refused(world, "pause", rid) == f"request {rid}: can't pause in state PAUSED"

        async def settled() -> dict | None:
            detail = await world.detail(rid)
            return detail if all(j["batch_state"] == "settled" for j in detail["jobs"]) else None

        world.open_gate()
        detail = await world.until("every batch settled while paused", settled)
        assert detail["state"] == "paused"
        by_job = {j["job"]: j for j in detail["jobs"]}
        assert by_job[running["job"]]["outcome"] == "processed"  # it ran to its end
        withdrawn = [j for j in detail["jobs"] if j["outcome"] == "withdrawn"]
        assert len(withdrawn) == 3 and all(j["state"] == "cancelled" for j in withdrawn)
        assert all(j["stop"] == "request paused" for j in withdrawn)
        assert detail["stages"][0]["inputs"] == {"processed": 1, "unallocated": 3}

        assert (await world.call("resume", request=rid))["state"] == "running"
        assert (await world.wait(rid))["state"] == "completed"
        detail = await world.detail(rid)
        assert detail["stages"][0]["inputs"] == {"processed": 4}
        allocations = await world.engine.repo.read(
            lambda conn: conn.execute(
                "SELECT input, allocations FROM stage_inputs WHERE request = ?", (rid,)
            ).fetchall()
        )
        assert {n for _, n in allocations} == {1}  # the withdrawn batches did not count


async def test_cancel_kills_running_jobs(world: World) -> None:
    """Cancel ends the request cancelled and kills its running job on the agent."""
    await world.catalog(["r1.dat", "r2.dat"])
    rid = (await world.submit(world.definition(ONE_STAGE), gate=world.gate))["id"]
    running = await world.job_running(rid)
    assert (await world.call("cancel", request=rid))["state"] == "cancelled"
    assert (await world.wait(rid))["state"] == "cancelled"

    async def killed() -> dict | None:
        job = await world.call("status", job=running["job"])
        return job if job["state"] == "cancelled" else None

    job = await world.until("the running job to be killed", killed)
    assert job["attempt_list"][-1]["state"] == "cancelled"
    assert await refused(world, "resume", rid) == f"request {rid}: can't resume in state CANCELLED"
    detail = await world.until("the batches settled", lambda: _all_settled(world, rid))
    assert {j["outcome"] for j in detail["jobs"]} == {"withdrawn"}
    assert (await world.call("archive", request=rid))["state"] == "archived"


async def _all_settled(world: World, rid: str) -> dict | None:
    detail = await world.detail(rid)
    return detail if all(j["batch_state"] == "settled" for j in detail["jobs"]) else None


async def test_verbs_refused_while_running_and_for_unknown_requests(world: World) -> None:
    """A running request refuses approve and resume; an unknown id is not found."""
    await world.catalog(["r1.dat"])
    rid = (await world.submit(world.definition(ONE_STAGE), gate=world.gate))["id"]
    await world.job_running(rid)
    assert await refused(world, "approve", rid) == f"request {rid}: can't approve in state RUNNING"
    assert await refused(world, "resume", rid) == f"request {rid}: can't resume in state RUNNING"
    assert await refused(world, "archive", rid) == f"request {rid}: can't archive in state RUNNING"
    world.open_gate()
    assert (await world.wait(rid))["state"] == "completed"
    with pytest.raises(ClientError) as info:
        await world.call("pause", request="t-alice-0099")
    assert info.value.code == "not_found"
    assert str(info.value) == "no request t-alice-0099 (see `wfe requests`)"


async def test_a_submitted_request_can_be_cancelled(world: World) -> None:
    """Cancel before approval: nothing ever ran; the request can be archived."""
    path = world.definition(ONE_STAGE.replace('approval = "none"', 'approval = "required"'))
    rid = (await world.submit(path))["id"]
    assert (await world.call("cancel", request=rid))["state"] == "cancelled"
    assert (
        await refused(world, "approve", rid) == f"request {rid}: can't approve in state CANCELLED"
    )
    assert (await world.call("archive", request=rid))["state"] == "archived"
    detail = await world.detail(rid)
    assert (detail["stages"], detail["jobs"]) == ([], [])
    assert history(detail) == [
        ("submit", "user", "submitted"),
        ("cancel", "operator", "cancelled"),
        ("archive", "operator", "archived"),
    ]


async def test_a_job_failing_while_paused_fails_the_request(tmp_path: Path) -> None:
    """Paused, the running job still ends; when its failure fails the stage, the paused
    request fails; a failed request can be archived, and cancelled from paused."""
    text = ONE_STAGE.replace("max_allocations = 2", "max_allocations = 1").replace(
        'params = { gate = "${gate}" }', 'params = { gate = "${gate}", fail_on = "bad" }'
    )
    async with open_world(tmp_path, slots=1) as world:
        await world.catalog(["bad1.dat", "r2.dat"])
        rid = (await world.submit(world.definition(text), gate=world.gate))["id"]
        await world.job_running(rid)
        assert (await world.call("pause", request=rid))["state"] == "paused"
        world.open_gate()
        done = await world.wait(rid)
        assert done["state"] == "failed"
        assert done["error"].startswith("stage 'a' failed: input catalog:")
        assert history(await world.detail(rid))[-2:] == [
            ("pause", "operator", "paused"),
            ("fail", "engine", "failed"),
        ]
        assert (await world.call("archive", request=rid))["state"] == "archived"
        other = (await world.submit(world.definition(ONE_STAGE), gate=world.root / "shut"))["id"]
        await world.job_running(other)
        await world.call("pause", request=other)
        assert (await world.call("cancel", request=other))["from"] == "paused"
        assert (await world.wait(other))["state"] == "cancelled"
