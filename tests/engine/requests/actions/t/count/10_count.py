"""Count a stage's inputs: a test action run as a request's stage."""

from __future__ import annotations

__priority__ = 10


async def main(ctx, params):
    return {"results": {"count": len(params.get("inputs", []))}}
