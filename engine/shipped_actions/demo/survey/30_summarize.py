"""The survey's result: what was inspected, and the total size."""

from __future__ import annotations

from typing import Any

from wfe.engine.runtime.actions import Context

__tags__ = ("demo",)
__priority__ = 30


async def main(ctx: Context, params: dict[str, Any]) -> Any:
    inspected = params["inspected"]
    return {
        "files": len(inspected),
        "bytes": sum(item["size"] for item in inspected),
        "host": ((params.get("host") or {}).get("results") or {}).get("hostname"),
    }
