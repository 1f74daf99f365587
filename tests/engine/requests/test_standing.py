"""Standing requests through a real engine (real repository, real local agents): new
catalog entries are processed without any resubmission, the request stays running, and
ends only when cancelled."""

from __future__ import annotations

from typing import Any

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

    await world.catalog(["other.dat"], kind="calibration")  # not matched by the query
    await world.catalog(["r1.dat"])  # refreshed, already processed
    code, out, err = await world.wfe("cancel", rid)
    assert code == 0, err
    assert (await world.wait(rid))["state"] == "cancelled"
    detail = await world.detail(rid)
    assert counts(detail)["cal"][1] == {"processed": 5}
