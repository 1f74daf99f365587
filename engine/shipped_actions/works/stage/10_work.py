"""A request stage served by pull workers: one work per batch, into the bucket ``pipeline``.

Use it as a stage's action (``action = "works.stage"``) with ``params = { pipeline = "calib",
function = "mymodule.calibrate" }``: the stage's batches run on whatever host runs ``wfe work
run calib mymodule.calibrate``. The work's fields (``function``, ``command``, ``priority``,
``timeout``, ``retries``, ``site``, ``tags``, ``group``, ``user``) are taken from the params;
every other param, with the batch's ``inputs``, is the work's ``parameters``. What the worker
returns is the batch's result: its ``results``, and its ``products`` and ``plots`` as product
records (size and sha256 read here, so the files must be on storage the engine sees; a
product whose entry in ``results["from"]`` lists input paths comes from those inputs only).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import trio

from wfe.engine.runtime.actions import Context

WORK_FIELDS = (
    "function",
    "command",
    "priority",
    "timeout",
    "retries",
    "site",
    "tags",
    "group",
    "user",
)


def _describe(paths: list[str], kind: str, sources: dict[str, Any]) -> list[dict[str, Any]]:
    products = []
    for path in paths:
        digest = hashlib.sha256()
        with open(path, "rb") as file:
            for block in iter(lambda: file.read(1 << 20), b""):
                digest.update(block)
        product: dict[str, Any] = {
            "path": str(Path(path).resolve()),
            "type": kind,
            "size": Path(path).stat().st_size,
            "sha256": digest.hexdigest(),
        }
        made_from = sources.get(path)
        if isinstance(made_from, list) and made_from:
            product["from"] = [str(p) for p in made_from]
        products.append(product)
    return products


async def main(ctx: Context, params: dict[str, Any]) -> Any:
    pipeline = params.pop("pipeline", None)
    if not isinstance(pipeline, str) or not pipeline:
        raise ValueError('works.stage: params.pipeline is required (the bucket, e.g. "calib")')
    fields = {key: params.pop(key) for key in WORK_FIELDS if key in params}
    work = await ctx.work(pipeline, params, **fields)
    results = dict(work.results or {})
    raw = results.get("from")
    sources: dict[str, Any] = raw if isinstance(raw, dict) else {}
    products: list[str] = list(work.products or [])
    plots: list[str] = list(work.plots or [])
    described = await trio.to_thread.run_sync(
        lambda: _describe(products, "science", sources) + _describe(plots, "plot", sources)
    )
    ctx.log.info("work %s (%s): %d products", work.id, pipeline, len(described))
    return {"results": {"work": work.id, **results}, "products": described}
