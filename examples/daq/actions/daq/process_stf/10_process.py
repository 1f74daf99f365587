"""The STF processing reactor (``[reactors] stf_gen`` of stf_processing_default.toml): each
STF the DAQ announces is processed whole, as the seed's processing agent does.

It takes ``[stf_processing] processing_time`` seconds (default 5) of the execution's clock (a
simulated second in ``wfe simulate``), then announces ``stf_processed`` with the STF's run,
file and sequence, so that whatever comes next can react in turn.
"""

from __future__ import annotations

from typing import Any

from wfe.engine.runtime.actions import Context

PROCESSING_TIME = 5.0


async def main(ctx: Context, params: dict[str, Any]) -> Any:
    seconds = float(ctx.config.get("stf_processing", {}).get("processing_time", PROCESSING_TIME))
    began = ctx.now
    await ctx.sleep(seconds)
    done = {
        "run_id": params["run_id"],
        "filename": params["filename"],
        "sequence": params["sequence"],
        "began": began,
        "ended": ctx.now,
    }
    await ctx.publish("stf_processed", done)
    return {"results": done}
