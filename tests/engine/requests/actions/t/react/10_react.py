"""A definition's reactor: returns the broadcast message it was started with."""

from __future__ import annotations

from typing import Any

from wfe.engine.runtime.actions import Context


async def main(ctx: Context, params: dict[str, Any]) -> Any:
    return {"results": {"reacted_to": params}}
