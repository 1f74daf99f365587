"""Checksum one file on an agent."""

from __future__ import annotations

__tags__ = ("demo",)
__priority__ = 10
__params__ = {"path": str, "seconds": float}


async def main(ctx, params):
    done = await ctx.rscript("checksum", {"path": params["path"]})
    params["sha256"] = done.result["products"][0]["sha256"]
    params["size"] = done.result["results"]["size"]
