"""Broadcast how many inputs this stage's batch has, on the topic ``stf_gen``."""

from __future__ import annotations

from typing import Any

from wfe.engine.runtime.actions import Context


async def main(ctx: Context, params: dict[str, Any]) -> Any:
    await ctx.publish("stf_gen", {"inputs": len(params.get("inputs", [])), "seq": 1})
