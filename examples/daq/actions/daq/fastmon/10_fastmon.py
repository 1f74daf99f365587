"""The fast-monitoring reactor (``[reactors] stf_gen`` of fast_processing_default.toml): as
the seed's fastmon and fast-processing agents, it samples a fraction of the STFs and cuts
each sample into TF slices for near-real-time monitoring.

``[fast_processing] stf_sampling_rate`` (the fraction) decides which STFs are samples: the
first of a run, then one every ``round(1 / rate)``, so a run of N STFs has ``ceil(N * rate)``
samples whatever the order reactions run in. A sample becomes ``slices_per_sample`` slices,
each announced as ``tf_slice``, then processed side by side (as by the seed's workers) for
``slice_processing_time`` seconds of the execution's clock; an STF that is no sample ends at
once.
"""

from __future__ import annotations

from typing import Any

from wfe.engine.runtime.actions import Context


def sampled(sequence: int, rate: float) -> bool:
    """True if STF number ``sequence`` (from 1) of a run is a sample at ``rate``."""
    if rate <= 0:
        return False
    return (sequence - 1) % max(1, round(1 / rate)) == 0


async def main(ctx: Context, params: dict[str, Any]) -> Any:
    fast = ctx.config.get("fast_processing", {})
    if not sampled(int(params["sequence"]), float(fast.get("stf_sampling_rate", 0.05))):
        return {"results": {"sampled": False}}
    slices = int(fast.get("slices_per_sample", 15))
    seconds = float(fast.get("slice_processing_time", 30))

    for index in range(slices):  # announced in order (each publish is a numbered call)
        await ctx.publish(
            "tf_slice",
            {
                "run_id": params["run_id"],
                "filename": params["filename"],
                "sequence": params["sequence"],
                "slice": index,
                "slices": slices,
            },
        )
    await ctx.sleep(seconds)  # the workers process the slices side by side
    return {"results": {"sampled": True, "slices": slices}}
