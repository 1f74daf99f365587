"""Products, provenance and checking through a real engine; and a restart mid-request."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
import trio

from wfe.engine.cli.client import ClientError
from wfe.engine.requests.products import render_provenance

from .conftest import HEAD, World, open_world

CHAIN = (
    HEAD
    + """
[[stages]]
name = "first"
rscript = "work"
consumes = "query"
max_inputs = 2

[[stages]]
name = "second"
rscript = "work"
consumes = { stage = "first", types = ["science"] }
"""
)

HOLD = """
[workflow]
name = "hold"
namespace = "tests"

[policy]
approval = "none"

[params.gate]
type = "str"

[[stages]]
name = "make"
rscript = "work"
params = { count = 2 }

[[stages]]
name = "hold"
rscript = "work"
after = ["make"]
params = { gate = "${gate}", count = 1 }
"""


async def test_provenance_goes_back_to_the_raw_inputs(world: World) -> None:
    """A product of the second stage names its job, definition and inputs; each input is
    a product of the first stage, whose inputs are the catalogued raw files."""
    raw = await world.catalog(["r1.dat", "r2.dat", "r3.dat"])
    by_path = {e["path"]: e for e in raw}
    record = await world.submit(world.definition(CHAIN))
    rid = record["id"]
    assert (await world.wait(rid))["state"] == "completed"
    made = await world.call("products", request=rid)
    assert [p["stage"] for p in made] == ["first"] * 3 + ["second"] * 3  # one per input
    for p in made:
        data = await trio.Path(p["path"]).read_bytes()
        assert (p["size"], p["sha256"]) == (len(data), hashlib.sha256(data).hexdigest())
        assert p["definition"] == record["definition"]
        assert (
            Path(p["path"]).parent.parent.parent.name == rid
        )  # products/<request>/<stage>/<batch>
    final = made[3]
    chain = await world.call("provenance", product=final["id"])
    assert chain["made_by"]["job"] == final["job"]
    assert chain["made_by"]["rscript"].startswith("tests/work@")
    assert chain["made_by"]["state"] == "succeeded"
    assert chain["made_by"]["agent"] == "local-1"
    assert chain["definition_name"] == "t"
    assert [i["id"] for i in chain["from"]] == [p["id"] for p in made[:3]]
    raw_seen = set()
    for upstream in chain["from"]:
        assert upstream["stage"] == "first"
        for item in upstream["from"]:
            assert item["kind"] == "catalog"
            assert item["sha256"] == by_path[item["path"]]["sha256"]
            raw_seen.add(item["path"])
    assert raw_seen == set(by_path)
    lines = render_provenance(chain)
    assert lines[0].startswith(f"{final['id']} science {final['path']}")
    assert sum(1 for line in lines if line.strip().startswith("raw ")) == 2 + 2 + 1  # per batch
    assert sum(1 for line in lines if "definition t sha256" in line) == 1
    with pytest.raises(ClientError) as info:
        await world.call("provenance", product="p999999")
    assert info.value.code == "not_found"


async def _held(world: World, **params: Any) -> tuple[str, list[dict[str, Any]]]:
    """Submit HOLD; wait until its second stage runs (held at the gate); return the
    request id and the first stage's products."""
    rid = (await world.submit(world.definition(HOLD), gate=world.gate, **params))["id"]
    await world.job_running(rid, "hold")
    made = await world.call("products", request=rid)
    assert [p["stage"] for p in made] == ["make", "make"]
    return rid, made


async def test_checking_fails_when_a_product_is_deleted(world: World) -> None:
    """A product file gone before checking fails the request, naming the product."""
    rid, made = await _held(world)
    await trio.Path(made[0]["path"]).unlink()
    world.open_gate()
    done = await world.wait(rid)
    assert done["state"] == "failed"
    problem = f"product {made[0]['id']} ({made[0]['path']}): missing"
    assert done["failures"] == [problem]
    assert done["error"] == f"checking failed: {problem}"
    history = [
        h["to"] for h in (await world.detail(rid))["history"] if h["kind"] == "request.state"
    ]
    assert history[-2:] == ["checking", "failed"]


async def test_checking_fails_when_a_product_is_modified(world: World) -> None:
    """A product whose content changed before checking fails the request; every
    problem is listed, the first one in the error."""
    rid, made = await _held(world)
    for p in made:
        await trio.Path(p["path"]).write_text("changed\n")
    world.open_gate()
    done = await world.wait(rid)
    assert done["state"] == "failed"
    assert len(done["failures"]) == 2
    for p, line in zip(made, done["failures"], strict=True):
        assert line.startswith(f"product {p['id']} ({p['path']}): sha256 ")
        assert line.endswith(f"differs from the recorded {p['sha256'][:12]}…")
    assert done["error"].endswith("(and 1 more)")


@pytest.mark.slow
async def test_an_engine_restart_resumes_the_request(tmp_path: Path) -> None:
    """Stopping the engine mid-request and starting it again: the request picks up from
    the repository and completes; nothing is lost or done twice."""
    async with open_world(tmp_path) as world:
        rid, made = await _held(world)
    (tmp_path / "gate").write_text("open\n")
    async with open_world(tmp_path) as world:
        done = await world.wait(rid)
        assert done["state"] == "completed"
        after = await world.call("products", request=rid)
        assert [p["id"] for p in after[:2]] == [p["id"] for p in made]
        assert [p["stage"] for p in after] == ["make", "make", "hold"]
        detail = await world.detail(rid)
        assert {s["name"]: s["inputs"] for s in detail["stages"]} == {
            "make": {"processed": 1},
            "hold": {"processed": 1},
        }
        assert [h["to"] for h in detail["history"] if h["kind"] == "request.state"] == [
            "submitted", "approved", "running", "checking", "completed",
        ]  # fmt: skip


async def test_a_crash_between_batch_and_job_is_repaired(tmp_path: Path) -> None:
    """What a crash between recording a batch and its job leaves behind (a batch without
    a job, a job no batch names) is repaired on the next step: the batch is withdrawn,
    the job cancelled, and the request still completes."""
    from wfe.engine.repository import request_batches as store

    async with open_world(tmp_path, slots=1) as world:
        await world.catalog(["r1.dat", "r2.dat"])
        text = HEAD + (
            '\n[params.gate]\ntype = "str"\n\n[[stages]]\nname = "a"\nrscript = "work"\n'
            'consumes = "query"\nmax_inputs = 1\nparams = { gate = "${gate}" }\n'
        )
        rid = (await world.submit(world.definition(text), gate=world.gate))["id"]
        await world.job_running(rid)
        await world.call("pause", request=rid)
        world.open_gate()

        async def paused_and_settled() -> Any:
            detail = await world.detail(rid)
            return detail["stages"][0]["inputs"] == {"processed": 1, "unallocated": 1} and all(
                j["batch_state"] == "settled" for j in detail["jobs"]
            )

        await world.until("the paused request to settle", paused_and_settled)
        key = f"catalog:{world.data / 'r2.dat'}"
        lost = await world.engine.repo.write(store.open_batch(rid, "a", [key], None))
        # A job of the request that no agent will take, so it is still there to cancel.
        orphan = await world.engine.controller.submit(
            "noop", {}, request_id=rid, requires={"tags": ["nowhere"]}
        )
        await world.call("resume", request=rid)
        assert (await world.wait(rid))["state"] == "completed"
        jobs = {j["batch"]: j for j in (await world.detail(rid))["jobs"]}
        assert (jobs[lost.id]["outcome"], jobs[lost.id]["error"]) == (
            "withdrawn",
            "its job was never started",
        )
        assert (await world.call("status", job=orphan))["state"] == "cancelled"
        rows = await world.engine.repo.read(
            lambda conn: conn.execute(
                "SELECT state, allocations FROM stage_inputs WHERE input = ?", (key,)
            ).fetchall()
        )
        assert rows == [("processed", 1)]
