"""Fan out: one actor action per file, all in parallel, plus a look at a host."""

from __future__ import annotations

from typing import Any

from wfe.engine.runtime.actions import Context

__tags__ = ("demo",)
__priority__ = 20


async def main(ctx: Context, params: dict[str, Any]) -> Any:
    host = await ctx.start_rscript("hostinfo")
    handles = [
        await ctx.start_action("demo.inspect", path=path, seconds=params.get("seconds", 0.2))
        for path in params["paths"]
    ]
    params["inspected"] = [await h.join() for h in handles]
    params["host"] = (await host.join()).result
