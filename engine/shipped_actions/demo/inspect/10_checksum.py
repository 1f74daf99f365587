"""Checksum one file on an agent."""

from __future__ import annotations

from typing import Any

from wfe.engine.runtime.actions import Context

__tags__ = ("demo",)
__priority__ = 10
__params__ = {"path": str, "seconds": float}


async def main(ctx: Context, params: dict[str, Any]) -> Any:
    done = await ctx.rscript("checksum", {"path": params["path"]})
    result = done.result or {}
    params["sha256"] = result["products"][0]["sha256"]
    params["size"] = result["results"]["size"]
