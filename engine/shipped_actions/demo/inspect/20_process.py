"""Process the file (a stand-in: print and sleep on an agent)."""

from __future__ import annotations

from pathlib import PurePath
from typing import Any

from wfe.engine.runtime.actions import Context

__tags__ = ("demo",)
__priority__ = 20


async def main(ctx: Context, params: dict[str, Any]) -> Any:
    name = PurePath(params["path"]).name
    await ctx.rscript(
        "sleep_echo", {"message": f"processed {name}", "seconds": params.get("seconds", 0.0)}
    )
    return {"path": params["path"], "sha256": params["sha256"], "size": params["size"]}
