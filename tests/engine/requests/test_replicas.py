"""Replicas and distances through a real engine with local agents at two sites: each input is
read from its nearest replica by an agent at the site nearest it, never beyond the stage's
``max_distance``; the attempt records the replica; an input whose replicas are all too far
waits, and ``wfe request`` says why. Also request types' default priorities."""

from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path
from typing import Any
from unittest.mock import ANY

from tests.engine.requests.conftest import World, open_world
from wfe.engine.repository.replicas import attempt_replicas

SCRIPT = Path(__file__).with_name("located") / "located.py"

SITES = """
[agents.cern]
count = 1
slots = 2
site = "cern"

[agents.fnal]
count = 1
slots = 2
site = "fnal"

[sites.distances]
cern = { CERN_EOS = 0, FNAL_DCACHE = 70 }
fnal = { FNAL_DCACHE = 0, CERN_EOS = 70 }

[request_types]
priority = { analysis = 7, simulation = -3 }
"""

DEFINITION = """\
[workflow]
name = "located"
namespace = "tests"
type = "analysis"

[policy]
approval = "none"

[[query.where]]
field = "kind"
op = "eq"
value = "raw"

[[stages]]
name = "read"
rscript = "located"
consumes = "query"
max_inputs = 1
max_distance = {limit}
"""


def definition(world: World, limit: int, name: str = "located.toml") -> Path:
    folder = world.root / "located"
    (folder / "rscripts").mkdir(parents=True, exist_ok=True)
    shutil.copy(SCRIPT, folder / "rscripts" / "located.py")
    path = folder / name
    path.write_text(textwrap.dedent(DEFINITION.format(limit=limit)))
    return path


async def connected(world: World, names: set[str]) -> None:
    async def check() -> bool:
        return names <= {a["name"] for a in world.engine.agents() if a["state"] == "connected"}

    await world.until(f"agents {sorted(names)} connected", check)


async def replicas(world: World, path: str, *pairs: tuple[str, str]) -> None:
    for rse, location in pairs:
        code, out, err = await world.wfe("catalog", "replica", "add", path, rse, location)
        assert code == 0, err


async def test_each_input_is_read_from_its_nearest_replica_at_the_nearest_site(
    tmp_path: Path,
) -> None:
    """With agents at CERN and FNAL and max_distance 50, an input only at FNAL is read there
    from FNAL, one only at CERN there from CERN, one at both from the site that ran it; each
    job got its replica's location and its attempt records it. An input only on TAPE (a
    storage element no site lists: far) waits, never dispatched, and ``wfe request`` says
    why."""
    async with open_world(tmp_path, agents=0, extra_config=SITES) as world:
        await connected(world, {"cern-1", "fnal-1"})
        entries = await world.catalog(["a.raw", "b.raw", "c.raw", "d.raw"])
        path = {Path(e["path"]).name: e["path"] for e in entries}
        await replicas(
            world, path["a.raw"], ("CERN_EOS", "root://eos/a"), ("FNAL_DCACHE", "/pnfs/a")
        )
        await replicas(world, path["b.raw"], ("FNAL_DCACHE", "/pnfs/b"))
        await replicas(world, path["c.raw"], ("CERN_EOS", "root://eos/c"))
        await replicas(world, path["d.raw"], ("TAPE", "tape://d"))
        code, out, _ = await world.wfe("catalog", "replica", "ls", path["a.raw"], "--json")
        assert code == 0 and {r["rse"] for r in json.loads(out)} == {"CERN_EOS", "FNAL_DCACHE"}

        record = await world.submit(definition(world, 50))
        rid = record["id"]
        assert record["priority"] == 7  # its type's, from [request_types]

        async def three_done() -> Any:
            detail = await world.detail(rid)
            done = [j for j in detail["jobs"] if j["state"] == "succeeded"]
            return detail if len(done) == 3 else None

        detail = await world.until("three jobs done", three_done)
        products = await world.call("products", request=rid)
        given = {p["metadata"]["source"]: p["metadata"] for p in products}
        assert given["b.raw"] | {} == {
            "source": "b.raw",
            "rse": "FNAL_DCACHE",
            "location": "/pnfs/b",
        }
        assert given["c.raw"] == {"source": "c.raw", "rse": "CERN_EOS", "location": "root://eos/c"}
        assert given["a.raw"]["rse"] in ("CERN_EOS", "FNAL_DCACHE")

        site_of = {"cern-1": "CERN_EOS", "fnal-1": "FNAL_DCACHE"}
        for job in detail["jobs"]:
            if job["state"] != "succeeded":
                continue
            row = await world.engine.job(job["job"])
            [attempt] = row["attempt_list"]
            [item] = row["params"]["inputs"]  # as recorded: the catalog path
            used = await world.engine.repo.read(attempt_replicas(job["job"]))
            assert used == {1: [[given[Path(item["path"]).name]["rse"], ANY]]}
            [[rse, location]] = used[1]  # type: ignore[misc]
            assert rse == site_of[attempt["agent"]]  # distance 0: the agent's own site
            assert given[Path(item["path"]).name]["location"] == location

        waiting = next(j for j in detail["jobs"] if j["state"] != "succeeded")["job"]
        code, out, _ = await world.wfe("request", rid)
        assert code == 0
        assert (
            f"job {waiting} waits: {path['d.raw']}: no replica within max_distance 50 of an"
            " agent's site (nearest: TAPE at distance 100 from site cern)"
        ) in out
        assert (await world.engine.job(waiting))["attempt_list"] == []

        await world.call("cancel", request=rid)
        assert (await world.wait(rid))["state"] == "cancelled"


async def test_a_request_type_gives_its_priority_unless_the_submitter_gives_one(
    tmp_path: Path,
) -> None:
    """A definition's ``[workflow] type`` gives the request the priority ``[request_types]``
    sets for it; a priority given at submit wins; a type the engine does not know is refused
    in one line naming the known ones, and nothing is stored."""
    async with open_world(tmp_path, agents=0, extra_config=SITES) as world:
        path = definition(world, 50)
        assert (await world.submit(path))["priority"] == 7
        payload = submission_of(path, priority=2)
        assert (await world.call("submit", **payload))["priority"] == 2
        path.write_text(path.read_text().replace('type = "analysis"', 'type = "simulation"'))
        assert (await world.submit(path))["priority"] == -3
        before = [r["id"] for r in await world.call("requests")]
        path.write_text(path.read_text().replace('type = "simulation"', 'type = "calibration"'))
        code, _, err = await world.wfe("submit", str(path))
        assert code != 0
        assert (
            "workflow.type 'calibration' is not a request type of this engine (known: analysis,"
            " simulation; add it to [request_types] priority in wfe.toml)"
        ) in err
        assert [r["id"] for r in await world.call("requests")] == before


def submission_of(path: Path, **options: Any) -> dict[str, Any]:
    from wfe.engine.cli.requests import submission

    return submission(path, user="alice", **options)


async def test_replicas_are_added_listed_and_removed_and_bad_ones_refused(tmp_path: Path) -> None:
    """``wfe catalog add --rse`` records each path as its replica there; ``replica add`` adds
    another (again: moves it), ``replica rm`` forgets one; a path not in the catalog, a bad
    storage element name and a missing replica are refused in one line, storing nothing."""
    async with open_world(tmp_path, agents=0) as world:
        data = world.data / "e.raw"
        data.write_text("e\n")
        code, out, err = await world.wfe("catalog", "add", str(data), "--rse", "CERN_EOS")
        assert code == 0, err
        assert "replicas at CERN_EOS" in out
        await replicas(world, str(data), ("FNAL_DCACHE", "/pnfs/old"), ("FNAL_DCACHE", "/pnfs/e"))

        async def listed() -> list[tuple[str, str]]:
            code, out, _ = await world.wfe("catalog", "replica", "ls", "--json")
            assert code == 0
            return [(r["rse"], r["location"]) for r in json.loads(out)]

        assert await listed() == [("CERN_EOS", str(data)), ("FNAL_DCACHE", "/pnfs/e")]

        code, _, err = await world.wfe("catalog", "replica", "add", "/no/such", "X", "/x")
        assert code != 0 and "/no/such: not in the catalog (add it with `wfe catalog add`)" in err
        code, _, err = await world.wfe("catalog", "replica", "add", str(data), "bad rse", "/x")
        assert code != 0
        assert "storage element 'bad rse': use letters, digits, '_', '.', ':' and '-'" in err
        code, _, err = await world.wfe("catalog", "replica", "rm", str(data), "TAPE")
        assert code != 0 and f"{data}: no replica at TAPE" in err
        assert await listed() == [("CERN_EOS", str(data)), ("FNAL_DCACHE", "/pnfs/e")]

        code, _, err = await world.wfe("catalog", "replica", "rm", str(data), "CERN_EOS")
        assert code == 0, err
        assert await listed() == [("FNAL_DCACHE", "/pnfs/e")]
