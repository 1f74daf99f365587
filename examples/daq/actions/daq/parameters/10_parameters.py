"""The DAQ parameters a run of this definition uses, from ``ctx.config``.

As the seed's ``WorkflowExecutor`` builds them: ``[daq_state_machine]`` as the base, then
the workflow's own section (``[fast_processing]`` or ``[stf_processing]``) over it.
"""

from __future__ import annotations

from typing import Any

from wfe.engine.runtime.actions import Context

__priority__ = 10

SECTIONS = ("fast_processing", "stf_processing")


async def main(ctx: Context, params: dict[str, Any]) -> Any:
    daq = dict(ctx.config.get("daq_state_machine", {}))
    for section in SECTIONS:
        if section in ctx.config:
            daq.update(ctx.config[section])
    ctx.log.info("DAQ parameters: %s", daq)
    return {"results": daq}
