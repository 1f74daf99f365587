"""The STF datataking workflow: the seed's ``workflows/stf_datataking.py`` as a wfe action.

``[workflow] name = "stf_datataking"`` names it (``wfe simulate`` runs ``workflows.<name>``).
It simulates the ePIC DAQ state machine and broadcasts what downstream processing reacts to:

    no_beam/not_ready -> beam/not_ready (run_imminent) -> beam/ready
      -> run/physics (start_run; stf_gen every stf_interval)
      <-> run/standby (pause_run ... resume_run), physics_period_count periods
      -> beam/not_ready (end_run)

Its parameters are ``ctx.config``'s ``[daq_state_machine]`` with the workflow's own section
(``[fast_processing]`` or ``[stf_processing]``) over it, and this run's ``-p`` over both.
A physics period lasts ``physics_period_duration`` seconds, except that with ``stf_count``
the run ends once that many STFs are made (the last period lasts until then); with
``duration`` the run goes to its end sequence once that much simulated time has passed.
"""

from __future__ import annotations

from typing import Any

from wfe.engine.runtime.actions import Context

SECTIONS = ("fast_processing", "stf_processing")
TOPICS = ("run_imminent", "start_run", "stf_gen", "pause_run", "resume_run", "end_run")

__params__ = {
    "no_beam_not_ready_delay": float,
    "beam_not_ready_delay": float,
    "beam_ready_delay": float,
    "beam_not_ready_end_delay": float,
    "broadcast_delay": float,
    "stf_interval": float,
    "physics_period_duration": float,
    "physics_period_count": int,
    "standby_duration": float,
    "stf_count": int,
    "duration": float,
}


def parameters(config: Any, overrides: dict[str, Any]) -> dict[str, Any]:
    """The DAQ parameters, as the seed's WorkflowExecutor merges them, then ``overrides``."""
    daq = dict(config.get("daq_state_machine", {}))
    for section in SECTIONS:
        if section in config:
            daq.update(config[section])
    daq.update(overrides)
    daq.setdefault("stf_count", 0)
    daq.setdefault("duration", 0)
    return daq


class Datataking:
    """One run of the DAQ state machine."""

    def __init__(self, ctx: Context, daq: dict[str, Any]) -> None:
        execution = ctx.execution
        if execution is None:
            raise ValueError("workflows.stf_datataking runs in a simulation: use wfe simulate")
        self.ctx = ctx
        self.execution = execution
        self.daq = daq
        self.run_id = int(execution.id.rsplit("-", 1)[1])  # the execution's number
        self.stf_sequence = 0
        self.state = ("", "")

    async def enter(self, state: str, substate: str) -> None:
        self.state = (state, substate)
        await self.execution.state(state, substate)

    async def broadcast(self, topic: str, **extra: Any) -> None:
        await self.ctx.publish(
            topic,
            {
                "msg_type": topic,
                "execution_id": self.execution.id,
                "run_id": self.run_id,
                "simulation_tick": self.ctx.now,
                "state": self.state[0],
                "substate": self.state[1],
                **extra,
            },
        )

    def done(self) -> bool:
        """The run has made its STFs, or lasted its duration."""
        count, duration = self.daq["stf_count"], self.daq["duration"]
        return (count > 0 and self.stf_sequence >= count) or (
            duration > 0 and self.ctx.now >= duration
        )

    async def execute(self) -> dict[str, Any]:
        daq, ctx = self.daq, self.ctx
        # State 1: no beam / not ready (the collider is not operating)
        await self.enter("no_beam", "not_ready")
        await ctx.sleep(daq["no_beam_not_ready_delay"])
        # State 2: beam / not ready (run start imminent)
        await self.enter("beam", "not_ready")
        await self.broadcast("run_imminent")
        await ctx.sleep(daq["broadcast_delay"])
        await ctx.sleep(daq["beam_not_ready_delay"])
        # State 3: beam / ready (ready for physics)
        await self.enter("beam", "ready")
        await ctx.sleep(daq["beam_ready_delay"])
        periods = daq["physics_period_count"]
        period = 0
        while not self.done() and (periods == 0 or period < periods):
            await self.enter("run", "physics")
            await self.broadcast("start_run" if period == 0 else "resume_run")
            await ctx.sleep(daq["broadcast_delay"])
            period += 1
            await self.physics(last=periods != 0 and period == periods)
            if not self.done() and (periods == 0 or period < periods):
                await self.enter("run", "standby")
                await self.broadcast("pause_run")
                await ctx.sleep(daq["broadcast_delay"])
                await ctx.sleep(daq["standby_duration"])
        # State 7: beam / not ready, the run ends
        await self.enter("beam", "not_ready")
        await self.broadcast("end_run", stfs=self.stf_sequence)
        await ctx.sleep(daq["broadcast_delay"])
        await ctx.sleep(daq["beam_not_ready_end_delay"])
        self.execution.metrics.update(
            {"stfs": self.stf_sequence, "physics_periods": period, "run_id": self.run_id}
        )
        return {"run_id": self.run_id, "stfs": self.stf_sequence, "physics_periods": period}

    async def physics(self, *, last: bool) -> None:
        """STFs every ``stf_interval`` for ``physics_period_duration`` seconds (the last
        period of a count-based run: until ``stf_count`` STFs)."""
        daq, ctx = self.daq, self.ctx
        began = ctx.now
        count_based = daq["stf_count"] > 0 and last
        while not self.done():
            if not count_based and ctx.now - began >= daq["physics_period_duration"]:
                return
            self.stf_sequence += 1
            filename = f"swf.{self.run_id:06d}.{self.stf_sequence:06d}.stf"
            await self.broadcast("stf_gen", filename=filename, sequence=self.stf_sequence)
            await ctx.sleep(daq["stf_interval"])


async def main(ctx: Context, params: dict[str, Any]) -> Any:
    return await Datataking(ctx, parameters(ctx.config, params)).execute()
