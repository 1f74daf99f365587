"""A request stage served by pull workers (``work = "calib"``, run by the shipped action
``works.stage``): one work per batch goes into its bucket; what the worker returns becomes the batch's products, with
provenance back to the raw inputs."""

from __future__ import annotations

import hashlib
from pathlib import Path

import trio

from wfe.engine.repository import works as rows

from .conftest import HEAD, PATIENCE, World

WORK_STAGE = (
    HEAD
    + """
[[stages]]
name = "calibrate"
work = "calib"
consumes = "query"
max_inputs = 1
params = { function = "calib.run", priority = 4, scale = 2 }
"""
)


async def serve_calibrations(world: World, out: Path, count: int) -> list[str]:
    """Act as ``wfe work run calib calib.run`` would: take ``count`` works, write one product
    per input (naming the input it came from) and report it; return the work ids."""
    done = []
    query = rows.WorkQuery(pipeline="calib")
    with trio.fail_after(PATIENCE):
        while len(done) < count:
            work = await world.engine.withdraw_work(query, worker="calibrator")
            if work is None:
                await trio.sleep(0.05)
                continue
            assert work.id is not None
            assert (work.function, work.priority, work.parameters["scale"]) == ("calib.run", 4, 2)
            [item] = work.parameters["inputs"]
            product = out / (Path(item["path"]).name + ".cal")
            product.write_text(f"calibrated x{work.parameters['scale']}\n")
            changes = {
                "status": "success",
                "products": [str(product)],
                "results": {"from": {str(product): [item["path"]]}, "gain": 1.5},
            }
            await world.engine.update_work(
                work.id, attempt=work.attempt, changes=changes, by="calibrator"
            )
            done.append(work.id)
    return done


async def test_a_work_stage_runs_on_pull_workers_and_records_products(
    world: World, tmp_path: Path
) -> None:
    """Two raw files, one work each into the bucket ``calib`` (the stage's params as its fields
    and parameters, the input as ``inputs``); the worker's files become the stage's products,
    size and sha256 read by the engine, each made from its own raw file; the request completes."""
    raw = await world.catalog(["r1.dat", "r2.dat"])
    record = await world.submit(world.definition(WORK_STAGE))
    out = tmp_path / "calibrated"
    out.mkdir()
    works = await serve_calibrations(world, out, 2)
    assert (await world.wait(record["id"]))["state"] == "completed"
    made = await world.call("products", request=record["id"])
    assert sorted(Path(p["path"]).name for p in made) == ["r1.dat.cal", "r2.dat.cal"]
    by_raw = {e["path"]: e for e in raw}
    for product in made:
        data = await trio.Path(product["path"]).read_bytes()
        assert (product["size"], product["sha256"]) == (len(data), hashlib.sha256(data).hexdigest())
        chain = await world.call("provenance", product=product["id"])
        [source] = chain["from"]
        assert source["kind"] == "catalog"
        assert Path(product["path"]).name == Path(source["path"]).name + ".cal"
        assert source["sha256"] == by_raw[source["path"]]["sha256"]
    for work_id in works:
        work = await world.engine.work(work_id)
        assert work.status.value == "success"
