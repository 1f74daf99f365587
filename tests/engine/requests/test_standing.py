"""Standing requests through a real engine (real repository, real local agents): new
catalog entries are processed without any resubmission, the request stays running, and
ends only when cancelled."""

from __future__ import annotations

from typing import Any

from wfe.engine.cli.requests import submission

from .conftest import World

CONTINUOUS = """
[workflow]
name = "s"
namespace = "tests"
trigger = "continuous"

[policy]
approval = "none"

[[query.where]]
field = "kind"
op = "eq"
value = "raw"

[[stages]]
name = "cal"
rscript = "work"
consumes = "query"
max_inputs = 1

[[stages]]
name = "map"
rscript = "work"
consumes = "cal"
"""


def counts(detail: dict[str, Any]) -> dict[str, tuple[str, dict[str, int]]]:
    return {s["name"]: (s["state"], s["inputs"]) for s in detail["stages"]}


async def processed(world: World, rid: str, cal: int, map_: int) -> dict[str, Any]:
    """The request's detail once ``cal`` and ``map`` have processed that many inputs."""

    async def check() -> Any:
        detail = await world.detail(rid)
        stages = counts(detail)
        done = (
            stages.get("cal", ("", {}))[1].get("processed") == cal
            and stages.get("map", ("", {}))[1].get("processed") == map_
            and not any(j["state"] in ("queued", "running") for j in detail["jobs"])
        )
        return detail if done else None

    return await world.until(f"cal {cal} and map {map_} processed", check)  # type: ignore[no-any-return]


async def test_new_catalog_entries_run_without_resubmission(world: World) -> None:
    """A continuous request processes the entries there at approval, then stays running;
    entries catalogued later go through both stages with no new request, and the request
    ends only when cancelled."""
    await world.catalog(["r1.dat", "r2.dat"])
    rid = (await world.submit(world.definition(CONTINUOUS)))["id"]
    detail = await processed(world, rid, 2, 2)
    assert detail["state"] == "running"
    assert counts(detail) == {
        "cal": ("running", {"processed": 2}),
        "map": ("running", {"processed": 2}),
    }

    await world.catalog(["r3.dat", "r4.dat", "r5.dat"])
    detail = await processed(world, rid, 5, 5)
    assert detail["state"] == "running"
    requests = await world.call("requests")
    assert [r["id"] for r in requests] == [rid]  # nothing was submitted again
    products = await world.call("products", request=rid)
    made = sorted((p["stage"], p["path"].rsplit("/", 1)[-1]) for p in products)
    assert [n for s, n in made if s == "cal"] == [f"r{i}.dat.out" for i in range(1, 6)]
    assert len([n for s, n in made if s == "map"]) == 5

    code, out, err = await world.wfe("status", rid)
    assert code == 0, err
    assert "standing: trigger continuous" in out and "stale products: 0" in out
    assert any(line.split()[:3] == ["cal", "0", "0"] for line in out.splitlines())
    view = (await world.detail(rid))["standing"]
    assert [(s["stage"], s["gap"], s["cooldown"]) for s in view["stages"]] == [
        ("cal", 0, 0.0),
        ("map", 0, 0.0),
    ]
    assert all(s["last_round"] is not None for s in view["stages"])

    await world.catalog(["other.dat"], kind="calibration")  # not matched by the query
    await world.catalog(["r1.dat"])  # refreshed, already processed
    code, out, err = await world.wfe("cancel", rid)
    assert code == 0, err
    assert (await world.wait(rid))["state"] == "cancelled"
    detail = await world.detail(rid)
    assert counts(detail)["cal"][1] == {"processed": 5}


VERSIONED = """
[workflow]
name = "v"
namespace = "tests"
trigger = "continuous"

[policy]
approval = "none"

[[query.where]]
field = "kind"
op = "eq"
value = "raw"

[[stages]]
name = "raw"
rscript = "work"
consumes = "query"
max_inputs = 1

[[stages]]
name = "cal"
rscript = "work"
consumes = "raw"
max_inputs = 1
version_policy = "reprocess"
params = { count = COUNT }

[[stages]]
name = "map"
rscript = "work"
consumes = "cal"
"""


async def jobs_of(world: World, rid: str) -> dict[str, int]:
    detail = await world.detail(rid)
    found: dict[str, int] = {}
    for job in detail["jobs"]:
        found[job["stage"]] = found.get(job["stage"], 0) + 1
    return found


async def settled(world: World, rid: str, stage: str, current: int) -> None:
    """Wait until ``stage`` has ``current`` products that are not stale and nothing runs."""

    async def check() -> bool:
        products = await world.call("products", request=rid)
        now = [p for p in products if p["stage"] == stage and p["stale"] is None]
        detail = await world.detail(rid)
        busy = any(j["state"] in ("queued", "running") for j in detail["jobs"])
        gap = any(s["inputs"].get("unallocated") for s in detail["stages"])
        return len(now) == current and not busy and not gap

    await world.until(f"{current} current products of {stage}", check)


async def test_a_new_version_reprocesses_the_stage_and_downstream_only(world: World) -> None:
    """Changing cal's parameters under version_policy "reprocess" re-runs cal on every
    input and map after it; raw, upstream, runs nothing more. The old products of cal and
    map are stale (and listed by `wfe products --stale`); raw's stay current."""
    await world.catalog(["r1.dat", "r2.dat", "r3.dat"])
    path = world.definition(VERSIONED.replace("COUNT", "1"))
    rid = (await world.submit(path))["id"]
    await settled(world, rid, "map", 3)
    before = await world.call("products", request=rid)
    jobs_before = await jobs_of(world, rid)
    assert jobs_before["raw"] == 3 and jobs_before["cal"] == 3

    changed = world.definition(VERSIONED.replace("COUNT", "2"), name="v2.toml")
    payload = submission(changed, user="alice")
    record = await world.call(
        "submit",
        update=rid,
        **{k: payload[k] for k in ("expanded", "sources", "git", "scripts")},
    )
    assert record["state"] == "running" and record["definition"] != before[0]["definition"]
    await settled(world, rid, "cal", 3)
    await settled(world, rid, "map", 3)  # the old map products are stale, new ones made

    after = await world.call("products", request=rid)
    stale = await world.call("products", request=rid, stale=True)
    old = {p["id"]: p for p in before}
    assert {p["id"] for p in stale} == {i for i, p in old.items() if p["stage"] in ("cal", "map")}
    assert all(p["stale"] for p in stale)
    raw_now = [p["id"] for p in after if p["stage"] == "raw" and p["stale"] is None]
    assert raw_now == [i for i, p in old.items() if p["stage"] == "raw"]
    jobs_after = await jobs_of(world, rid)
    assert jobs_after["raw"] == jobs_before["raw"]  # nothing upstream ran again
    assert jobs_after["cal"] == 2 * jobs_before["cal"]
    versions = {p["version"] for p in after if p["stage"] == "cal" and p["stale"] is None}
    assert len(versions) == 1 and versions != {p["version"] for p in stale if p["stage"] == "cal"}

    code, out, err = await world.wfe("products", rid, "--stale")
    assert code == 0, err
    assert len(out.strip().splitlines()) == 1 + 6  # a header, the old cal and map products
    assert out.count("made from stale products") == 3  # the map's, made from the old cal's

    bad = world.definition(
        VERSIONED.replace("COUNT", "1").replace('"continuous"', '{ cron = "0 3 * * *" }'),
        name="v3.toml",
    )
    payload = submission(bad, user="alice")
    code, out, err = await world.wfe("submit", str(bad), "--update", rid)
    assert code != 0
    assert "the trigger changed from continuous to cron 0 3 * * *" in err


GROUPED = """
[workflow]
name = "g"
namespace = "tests"
trigger = "continuous"

[policy]
approval = "none"

[[query.where]]
field = "kind"
op = "eq"
value = "raw"

[[stages]]
name = "cal"
rscript = "work"
consumes = "query"
group_by = ["obs"]
"""


async def test_a_sub_group_that_grows_runs_again_whole(world: World) -> None:
    """group_by ["obs"]: one job per observation; a new file of observation A re-runs A's
    whole sub-group (its older products superseded), and B's is left alone."""
    await world.catalog(["a1.dat", "a2.dat"], obs="A")
    await world.catalog(["b1.dat"], obs="B")
    rid = (await world.submit(world.definition(GROUPED)))["id"]
    await settled(world, rid, "cal", 3)
    assert (await jobs_of(world, rid)) == {"cal": 2}
    before = {
        p["path"].rsplit("/", 1)[-1]: p["id"] for p in await world.call("products", request=rid)
    }

    await world.catalog(["a3.dat"], obs="A")
    await settled(world, rid, "cal", 4)
    assert (await jobs_of(world, rid)) == {"cal": 3}
    stale = await world.call("products", request=rid, stale=True)
    assert sorted(p["id"] for p in stale) == sorted([before["a1.dat.out"], before["a2.dat.out"]])
    assert all(p["stale"].startswith("superseded") for p in stale)
    current = [p for p in await world.call("products", request=rid) if p["stale"] is None]
    assert sorted(p["path"].rsplit("/", 1)[-1] for p in current) == [
        "a1.dat.out", "a2.dat.out", "a3.dat.out", "b1.dat.out"
    ]  # fmt: skip
    assert before["b1.dat.out"] in {p["id"] for p in current}


async def test_group_by_on_a_field_no_entry_has_is_a_warning(world: World) -> None:
    """group_by on a field that no catalog entry has: the request is submitted, and the
    submission warns in one line naming the stage and the field."""
    await world.catalog(["a1.dat"], obs="A")
    path = world.definition(GROUPED.replace('["obs"]', '["obs", "source"]'))
    code, out, err = await world.wfe("submit", str(path))
    assert code == 0, err
    assert err.strip() == (
        "warning: stages.cal.group_by: no catalog entry has field 'source'"
        " (every input falls in one sub-group)"
    )
    assert out.strip().startswith("g-")


async def test_an_entry_with_new_content_runs_again(world: World) -> None:
    """A catalog entry refreshed with new content re-runs its input and what was made from
    it downstream, nothing else; its old products are stale. The same content again
    re-runs nothing."""
    await world.catalog(["r1.dat", "r2.dat"])
    rid = (await world.submit(world.definition(CONTINUOUS)))["id"]
    await processed(world, rid, 2, 2)
    before = {p["id"]: p for p in await world.call("products", request=rid)}
    (world.data / "r2.dat").write_text("new data of r2\n")
    await world.call("catalog_add", paths=[str(world.data / "r2.dat")], metadata={"kind": "raw"})

    async def redone() -> Any:
        made = await world.call("products", request=rid)
        current = {p["id"]: p for p in made if p["stale"] is None}
        cal = [p for p in current.values() if p["stage"] == "cal"]
        maps = [p for p in current.values() if p["stage"] == "map"]
        used = {k.removeprefix("product:") for p in maps for k in p["inputs"]}
        detail = await world.detail(rid)
        busy = any(j["state"] in ("queued", "running") for j in detail["jobs"])
        whole = len(cal) == 2 and used == {p["id"] for p in cal}
        return made if whole and set(current) - set(before) and not busy else None

    made = await world.until("r2 and the map made again", redone)
    old_r2 = next(i for i, p in before.items() if p["stage"] == "cal" and "r2.dat" in p["path"])
    stale = {p["id"] for p in made if p["stale"]}
    from_r2 = {i for i, p in before.items() if f"product:{old_r2}" in p["inputs"]}
    assert stale == {old_r2} | from_r2
    jobs = (await world.detail(rid))["jobs"]
    cal_jobs = [j for j in jobs if j["stage"] == "cal"]
    assert len(cal_jobs) == 3  # r1 once, r2 twice

    await world.catalog(["r1.dat"])  # the same content: nothing runs
    detail = await processed(world, rid, 2, 2)
    assert len(detail["jobs"]) == len(jobs)


async def test_a_paused_standing_request_takes_inputs_and_runs_them_on_resume(
    world: World,
) -> None:
    """Paused, a standing request still records new catalog matches but starts no job;
    resumed, it runs them."""
    await world.catalog(["r1.dat"])
    rid = (await world.submit(world.definition(CONTINUOUS)))["id"]
    await processed(world, rid, 1, 1)
    code, _, err = await world.wfe("pause", rid)
    assert code == 0, err
    await world.catalog(["r2.dat", "r3.dat"])

    async def recorded() -> Any:
        detail = await world.detail(rid)
        return detail if detail["stages"][0]["inputs"].get("unallocated") == 2 else None

    detail = await world.until("the new inputs recorded", recorded)
    assert detail["state"] == "paused" and len(detail["jobs"]) == 2
    code, _, err = await world.wfe("resume", rid)
    assert code == 0, err
    detail = await processed(world, rid, 3, 3)
    assert detail["state"] == "running"


async def test_a_new_version_under_keep_reprocesses_nothing(world: World) -> None:
    """version_policy "keep": a new cal version re-runs nothing and makes nothing stale;
    the next new file is processed by the new version."""
    keep = VERSIONED.replace('version_policy = "reprocess"', 'version_policy = "keep"')
    await world.catalog(["r1.dat"])
    rid = (await world.submit(world.definition(keep.replace("COUNT", "1"))))["id"]
    await settled(world, rid, "map", 1)
    payload = submission(world.definition(keep.replace("COUNT", "2"), name="k2.toml"), user="a")
    keys = ("expanded", "sources", "git", "scripts")
    await world.call("submit", update=rid, **{k: payload[k] for k in keys})
    await world.catalog(["r2.dat"])
    await settled(world, rid, "map", 2)
    made = await world.call("products", request=rid)
    assert not [p for p in made if p["stale"]]
    cal = sorted((p["path"], p["version"]) for p in made if p["stage"] == "cal")
    assert len(cal) == 2 and cal[0][1] != cal[1][1]  # r1 by the old version, r2 by the new
    assert len((await world.detail(rid))["jobs"]) == 3 * 2


async def test_a_job_of_the_old_version_is_withdrawn(world: World) -> None:
    """A cal job still running when a new cal version arrives is stopped and its input
    withdrawn (not counted): only the new version makes cal's product."""
    gated = VERSIONED.replace(
        "params = { count = COUNT }", "params = { count = COUNT, gate = GATE }"
    )
    gated = gated.replace("GATE", f'"{world.gate}"')
    await world.catalog(["r1.dat"])
    rid = (await world.submit(world.definition(gated.replace("COUNT", "1"))))["id"]
    await world.job_running(rid, "cal")
    payload = submission(world.definition(gated.replace("COUNT", "2"), name="g2.toml"), user="a")
    keys = ("expanded", "sources", "git", "scripts")
    await world.call("submit", update=rid, **{k: payload[k] for k in keys})
    world.open_gate()
    await settled(world, rid, "map", 1)
    made = await world.call("products", request=rid)
    cal = [p for p in made if p["stage"] == "cal"]
    assert len(cal) == 1 and cal[0]["stale"] is None
    jobs = [j for j in (await world.detail(rid))["jobs"] if j["stage"] == "cal"]
    assert [j["outcome"] for j in jobs] == ["withdrawn", "processed"]
    assert jobs[0]["stop"] == "request updated: new version"
