"""Make the sample data files the survey inspects (the root object: a small dataset)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import trio

from wfe.engine.runtime.actions import Context

__tags__ = ("demo",)
__priority__ = 10
__params__ = {"files": int, "seconds": float, "data_dir": str}


def _make(data_dir: str, count: int) -> list[str]:
    folder = Path(data_dir)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"obs-{i:04d}.dat"
        seed = hashlib.sha256(f"wfe-demo-{i}".encode()).digest()
        path.write_bytes(seed * (64 + 32 * i))
        paths.append(str(path))
    return paths


async def main(ctx: Context, params: dict[str, Any]) -> Any:
    # File I/O would block the loop: it runs on a worker thread.
    params["paths"] = await trio.to_thread.run_sync(
        _make, params["data_dir"], params.get("files", 12)
    )
    ctx.log.info("prepared %d files in %s", len(params["paths"]), params["data_dir"])
