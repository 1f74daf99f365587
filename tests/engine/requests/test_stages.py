"""Stages and inputs through a real engine: the failure policy, allocation with failures
and retries, stage timeouts, and results that break the schema."""

from __future__ import annotations

from typing import Any

from .conftest import HEAD, World

PARAMS = """
[params.fail_on]
type = "str"
default = ""

[params.flaky]
type = "str"
default = ""

[params.gate]
type = "str"
default = ""
"""

THREE = (
    HEAD
    + PARAMS
    + """
[[stages]]
name = "a"
rscript = "work"
consumes = "query"
max_inputs = 1

[[stages]]
name = "b"
rscript = "work"
consumes = "a"
max_inputs = 1
params = { fail_on = "${fail_on}" }

[[stages]]
name = "c"
rscript = "work"
consumes = "b"
"""
)


def stages(detail: dict[str, Any]) -> dict[str, tuple[str, dict[str, int]]]:
    return {s["name"]: (s["state"], s["inputs"]) for s in detail["stages"]}


async def inputs(world: World, rid: str) -> list[tuple[str, str, str, int, str | None]]:
    def fn(conn: Any) -> list[tuple[str, str, str, int, str | None]]:
        return conn.execute(
            "SELECT stage, path, state, allocations, reason FROM stage_inputs WHERE request = ?"
            " ORDER BY stage, seq",
            (rid,),
        ).fetchall()

    return await world.engine.repo.read(fn)  # type: ignore[no-any-return]


async def test_a_failed_stage_fails_the_request_and_skips_downstream(world: World) -> None:
    """Policy "fail": an input that fails max_allocations times fails its stage, the
    stages after it are skipped, and the request fails naming the stage and the reason."""
    await world.catalog(["r1.dat", "r2.dat", "bad3.dat"])
    rid = (await world.submit(world.definition(THREE), fail_on="bad"))["id"]
    done = await world.wait(rid)
    assert done["state"] == "failed"
    error = done["error"]
    assert error.startswith("stage 'b' failed: input product:p")
    assert "allocated 2 times (limit 2); last: job j" in error
    assert "exited with code 3" in error
    detail = await world.detail(rid)
    assert stages(detail)["a"] == ("done", {"processed": 3})
    assert stages(detail)["c"][0] == "skipped"
    assert detail["stages"][2]["error"] == "upstream stage 'b' failed"
    bad = [i for i in await inputs(world, rid) if i[0] == "b" and "bad3" in i[1]]
    assert [(state, n) for _, _, state, n, _ in bad] == [("failed", 2)]


async def test_policy_complete_lists_failed_and_skipped_stages(world: World) -> None:
    """Policy "complete": the failed stage finishes its other inputs, its downstream is
    skipped, and the request completes listing both."""
    await world.catalog(["r1.dat", "r2.dat", "bad3.dat"])
    text = THREE.replace(
        "max_allocations = 2", 'max_allocations = 1\non_stage_failure = "complete"'
    )
    rid = (await world.submit(world.definition(text), fail_on="bad"))["id"]
    done = await world.wait(rid)
    assert done["state"] == "completed"
    assert done["error"] is None
    [failed, skipped] = done["failures"]
    assert failed.startswith("stage 'b' failed: input product:p") and "exited with code 3" in failed
    assert skipped == "stage 'c' skipped: upstream stage 'b' failed"
    detail = await world.detail(rid)
    assert stages(detail) == {
        "a": ("done", {"processed": 3}),
        "b": ("failed", {"processed": 2, "failed": 1}),
        "c": ("skipped", {}),
    }
    made = await world.call("products", request=rid)
    assert sorted((p["stage"], p["metadata"]["source"]) for p in made) == [
        ("a", "bad3.dat"),
        ("a", "r1.dat"),
        ("a", "r2.dat"),
        ("b", "r1.dat.out"),
        ("b", "r2.dat.out"),
    ]


async def test_a_failed_job_returns_its_inputs_to_the_pool(world: World) -> None:
    """A job that fails releases its inputs; a new batch takes them and succeeds. Each
    input was allocated twice, and the history shows both batches."""
    (world.root / "flaky").mkdir()
    await world.catalog(["r1.dat", "r2.dat"])
    text = THREE.replace(
        'consumes = "query"\nmax_inputs = 1',
        'consumes = "query"\nmax_inputs = 1\nparams = { flaky = "${flaky}" }',
    )
    rid = (await world.submit(world.definition(text), flaky=world.root / "flaky"))["id"]
    assert (await world.wait(rid))["state"] == "completed"
    a_inputs = [i for i in await inputs(world, rid) if i[0] == "a"]
    assert [(state, n) for _, _, state, n, _ in a_inputs] == [("processed", 2), ("processed", 2)]
    jobs = [j for j in (await world.detail(rid))["jobs"] if j["stage"] == "a"]
    assert sorted(j["outcome"] for j in jobs) == ["processed", "processed", "released", "released"]
    released = [j for j in jobs if j["outcome"] == "released"]
    assert all("exited with code 4" in j["error"] for j in released)


async def test_stage_retries_stay_within_one_allocation(world: World) -> None:
    """A stage's ``retries`` go to the controller: the job's second attempt succeeds and
    its input is allocated once."""
    (world.root / "flaky").mkdir()
    await world.catalog(["r1.dat"])
    text = (
        HEAD
        + PARAMS
        + """
[[stages]]
name = "a"
rscript = "work"
consumes = "query"
retries = 1
params = { flaky = "${flaky}" }
"""
    )
    rid = (await world.submit(world.definition(text), flaky=world.root / "flaky"))["id"]
    assert (await world.wait(rid))["state"] == "completed"
    [job] = (await world.detail(rid))["jobs"]
    status = await world.call("status", job=job["job"])
    assert [a["state"] for a in status["attempt_list"]] == ["failed", "succeeded"]
    assert [(state, n) for _, _, state, n, _ in await inputs(world, rid)] == [("processed", 1)]


async def test_no_matching_agent_within_wait_agent_fails_the_input(world: World) -> None:
    """A job no agent can take is stopped at the stage's wait_agent timeout; its inputs
    are released and, out of allocations, failed."""
    await world.catalog(["r1.dat"])
    text = (
        HEAD.replace("max_allocations = 2", "max_allocations = 1")
        + """
[[stages]]
name = "a"
rscript = "work"
consumes = "query"
requires = { tags = ["gpu"] }
timeouts = { wait_agent = 0.3 }
"""
    )
    rid = (await world.submit(world.definition(text)))["id"]
    done = await world.wait(rid)
    assert done["state"] == "failed"
    assert done["error"].endswith(
        "stopped: no agent took it within 0.3 s (stage timeouts.wait_agent)"
    )
    [job] = (await world.detail(rid))["jobs"]
    assert (job["state"], job["outcome"]) == ("cancelled", "released")


async def test_overall_timeout_kills_the_job(world: World) -> None:
    """A job running past the stage's overall timeout is killed and its inputs released."""
    await world.catalog(["r1.dat"])
    text = (
        HEAD.replace("max_allocations = 2", "max_allocations = 1")
        + PARAMS
        + """
[[stages]]
name = "a"
rscript = "work"
consumes = "query"
timeouts = { overall = 0.5 }
params = { gate = "${gate}" }
"""
    )
    rid = (await world.submit(world.definition(text), gate=world.gate))["id"]
    done = await world.wait(rid)
    assert done["state"] == "failed"
    assert done["error"].endswith(
        "stopped: overall timeout of 0.5 s exceeded (stage timeouts.overall)"
    )
    [job] = (await world.detail(rid))["jobs"]
    status = await world.call("status", job=job["job"])
    assert status["attempt_list"][-1]["state"] == "cancelled"  # killed on its agent


async def test_a_result_that_breaks_the_schema_releases_the_inputs(world: World) -> None:
    """A job whose result does not pass the result schema counts as failed for its
    inputs; no product is recorded."""
    await world.catalog(["r1.dat"])
    text = (
        HEAD.replace("max_allocations = 2", "max_allocations = 1")
        + """
[[stages]]
name = "a"
rscript = "work"
consumes = "query"
params = { bad_result = true }
"""
    )
    rid = (await world.submit(world.definition(text)))["id"]
    done = await world.wait(rid)
    assert done["state"] == "failed"
    assert "bad result: tests/work@" in done["error"]
    assert done["error"].endswith("result $.products[0] lacks 'sha256'")
    assert await world.call("products", request=rid) == []


async def test_a_stage_without_inputs_runs_once_and_feeds_the_next(world: World) -> None:
    """A stage that consumes nothing runs one job; a stage consuming only product types
    its upstream did not make has no inputs and is done at once."""
    text = """
[workflow]
name = "t"
namespace = "tests"

[policy]
approval = "none"

[[stages]]
name = "make"
rscript = "work"
params = { count = 3 }

[[stages]]
name = "use"
rscript = "work"
consumes = "make"
max_inputs = 2

[[stages]]
name = "plots"
rscript = "work"
consumes = { stage = "make", types = ["plot"] }
"""
    rid = (await world.submit(world.definition(text)))["id"]
    assert (await world.wait(rid))["state"] == "completed"
    detail = await world.detail(rid)
    assert stages(detail) == {
        "make": ("done", {"processed": 1}),
        "use": ("done", {"processed": 3}),
        "plots": ("done", {}),
    }
    assert [j["stage"] for j in detail["jobs"]] == ["make", "use", "use"]


async def test_a_stage_can_run_an_action(world: World) -> None:
    """A stage with ``action`` runs it as a job of the request with the stage's inputs."""
    await world.catalog(["r1.dat", "r2.dat", "r3.dat"])
    text = (
        HEAD + '\n[[stages]]\nname = "a"\naction = "t.count"\nconsumes = "query"\nmax_inputs = 2\n'
    )
    rid = (await world.submit(world.definition(text)))["id"]
    assert (await world.wait(rid))["state"] == "completed"
    jobs = (await world.detail(rid))["jobs"]
    assert [(j["inputs"], j["state"], j["outcome"]) for j in jobs] == [
        (2, "succeeded", "processed"),
        (1, "succeeded", "processed"),
    ]
    status = await world.call("status", job=jobs[0]["job"])
    assert (status["kind"], status["name"], status["result"]) == (
        "action",
        "t.count",
        {"results": {"count": 2}},
    )
