"""Publish something wrong (``params["bad"]`` says what), for the broadcast tests."""

from __future__ import annotations

from typing import Any

from wfe.engine.runtime.actions import Context

BAD: dict[str, tuple[str, Any]] = {
    "topic": ("9lives", {}),
    "list": ("ok", ["not", "an", "object"]),
    "nan": ("ok", {"x": float("nan")}),
    "big": ("ok", {"x": "y" * 70_000}),
}


async def main(ctx: Context, params: dict[str, Any]) -> Any:
    topic, message = BAD[params["bad"]]
    await ctx.publish(topic, message)
