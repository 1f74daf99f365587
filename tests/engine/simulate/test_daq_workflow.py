"""The example's STF datataking workflow (examples/daq/actions/workflows/stf_datataking)
on both clocks: the same tasklet code broadcasts the same sequence at the same simulation
times; in fast mode no trio time passes, in real time each message goes out at exactly
start + its simulation time (MockClock(autojump_threshold=0))."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trio
import trio.testing

from wfe.engine.definitions import config_of, load_definition
from wfe.engine.runtime.tasklets import ActionLibrary
from wfe.engine.simulate import workflow_action
from wfe.engine.simulate.clock import CURRENT, RealtimeClock, SimClock, VirtualClock

DAQ = Path(__file__).resolve().parents[3] / "examples" / "daq"

# fast_processing_default.toml: 5 s no beam, run_imminent, 1 + 5 s, 2 s ready, start_run at
# 13, ten STFs every 2 s from 14, end_run at 34, 1 + 5 s more: 40 s
EXPECTED = [
    (5.0, "run_imminent"),
    (13.0, "start_run"),
    *[(14.0 + 2 * i, "stf_gen") for i in range(10)],
    (34.0, "end_run"),
]


class Execution:
    """What the workflow uses of ``ctx.execution``: its id, state changes and metrics."""

    def __init__(self) -> None:
        self.id = "stf_datataking-alice-0007"
        self.states: list[tuple[float, str, str]] = []
        self.metrics: dict[str, Any] = {}
        self.task: Any = None

    async def state(self, state: str, substate: str = "") -> None:
        self.states.append((self.task.at, state, substate))


class Ctx:
    """A tasklet's context reduced to what the workflow calls, on a real simulation clock."""

    def __init__(self, clock: SimClock, config: Any) -> None:
        self.task = clock.task("root")
        self.execution = Execution()
        self.execution.task = self.task
        self.config = config
        self.sent: list[tuple[float, float, str, dict[str, Any]]] = []

    @property
    def now(self) -> float:
        return self.task.at

    async def sleep(self, seconds: float) -> None:
        await self.task.sleep(seconds)

    async def publish(self, topic: str, message: dict[str, Any]) -> None:
        self.sent.append((self.task.at, trio.current_time(), topic, message))


async def run(clock: SimClock) -> tuple[Ctx, Any]:
    definition = load_definition(DAQ / "fast_processing_default.toml")
    action = ActionLibrary([DAQ / "actions"]).get(workflow_action(definition))
    ctx = Ctx(clock, config_of(definition.expanded))
    CURRENT.set(ctx.task)
    result = await action.tasklets[0].main(ctx, {})
    return ctx, result


def test_fast_mode_runs_the_whole_run_without_trio_time() -> None:
    """On the virtual clock the run's 40 simulated seconds take no trio time, and the
    broadcasts come in the seed's order at their simulation times."""

    async def main() -> tuple[Ctx, Any]:
        ctx, result = await run(VirtualClock())
        assert trio.current_time() == 0
        return ctx, result

    ctx, result = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert [(sim, topic) for sim, _, topic, _ in ctx.sent] == EXPECTED
    assert result == {"run_id": 7, "stfs": 10, "physics_periods": 1}
    assert ctx.task.at == 40


async def test_real_time_sends_each_message_at_start_plus_its_simulation_time(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """With the real-time clock started at trio time 50, each message leaves at exactly
    50 + its simulation time, and the run ends at 90; the messages are those of fast mode."""
    await trio.sleep(50)
    ctx, _ = await run(RealtimeClock())
    assert [(sim, topic) for sim, _, topic, _ in ctx.sent] == EXPECTED
    assert [wall for _, wall, _, _ in ctx.sent] == [50 + sim for sim, _ in EXPECTED]
    assert trio.current_time() == 90


async def test_the_state_machine_and_the_stf_messages(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """States go no beam -> beam/not ready -> beam/ready -> physics -> beam/not ready; an
    STF message carries execution id, run id, file name, sequence, tick, state, substate."""
    ctx, _ = await run(VirtualClock())
    assert ctx.execution.states == [
        (0, "no_beam", "not_ready"),
        (5, "beam", "not_ready"),
        (11, "beam", "ready"),
        (13, "run", "physics"),
        (34, "beam", "not_ready"),
    ]
    stf = [m for _, _, topic, m in ctx.sent if topic == "stf_gen"]
    assert stf[2] == {
        "msg_type": "stf_gen",
        "execution_id": "stf_datataking-alice-0007",
        "run_id": 7,
        "simulation_tick": 18.0,
        "state": "run",
        "substate": "physics",
        "filename": "swf.000007.000003.stf",
        "sequence": 3,
    }
    assert ctx.execution.metrics == {"stfs": 10, "physics_periods": 1, "run_id": 7}


async def test_standard_processing_pauses_and_resumes_between_two_periods(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """stf_processing_default.toml (two 10 s periods, no STF count): start_run, five STFs,
    pause_run, standby, resume_run, five STFs, end_run."""
    definition = load_definition(DAQ / "stf_processing_default.toml")
    action = ActionLibrary([DAQ / "actions"]).get("workflows.stf_datataking")
    ctx = Ctx(VirtualClock(), config_of(definition.expanded))
    CURRENT.set(ctx.task)
    await action.tasklets[0].main(ctx, {})
    assert [(sim, topic) for sim, _, topic, _ in ctx.sent] == [
        (5, "run_imminent"),
        (13, "start_run"),
        *[(14 + 2 * i, "stf_gen") for i in range(5)],
        (24, "pause_run"),
        (27, "resume_run"),
        *[(28 + 2 * i, "stf_gen") for i in range(5)],
        (38, "end_run"),
    ]
    assert [s[1:] for s in ctx.execution.states].count(("run", "standby")) == 1


async def test_a_duration_ends_the_run_through_its_end_sequence(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """With duration = 20 (the seed's --duration) no STF starts at or after 20 s: STFs at
    14, 16 and 18, then end_run at 20 and the end delays; the run is not cut off."""
    definition = load_definition(DAQ / "fast_processing_default.toml")
    action = ActionLibrary([DAQ / "actions"]).get(workflow_action(definition))
    ctx = Ctx(VirtualClock(), config_of(definition.expanded))
    CURRENT.set(ctx.task)
    result = await action.tasklets[0].main(ctx, {"duration": 20.0})
    assert [(sim, topic) for sim, _, topic, _ in ctx.sent] == [
        (5, "run_imminent"),
        (13, "start_run"),
        (14, "stf_gen"),
        (16, "stf_gen"),
        (18, "stf_gen"),
        (20, "end_run"),
    ]
    assert result["stfs"] == 3 and ctx.task.at == 26
