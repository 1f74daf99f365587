"""What an execution records: its id from the request counter, state changes with their
simulation times, figures per state and topic, and its end (engine/simulate/execution.py,
engine/repository/executions.py) on a real repository."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from wfe.engine.definitions import config_of, load_definition
from wfe.engine.repository import Repository
from wfe.engine.repository import executions as rows
from wfe.engine.simulate.clock import CURRENT, VirtualClock
from wfe.engine.simulate.execution import Execution

DAQ = Path(__file__).resolve().parents[3] / "examples" / "daq"


async def started(repo: Repository, user: str = "alice") -> rows.ExecutionRecord:
    definition = load_definition(DAQ / "fast_processing_default.toml")
    return await repo.write(
        rows.create_execution(
            definition, user=user, action="workflows.stf_datataking", mode="fast", until=None,
            params={"stf_count": 2}, by="test",
        )
    )  # fmt: skip


async def test_ids_share_the_request_counter_of_workflow_and_user(repo: Repository) -> None:
    """Executions are numbered per workflow and user from 0001, atomically, by the writer;
    another user has its own sequence; the definition is stored once."""
    ids = [(await started(repo, user)).id for user in ("alice", "alice", "bob", "alice")]
    assert ids == [
        "stf_datataking-alice-0001",
        "stf_datataking-alice-0002",
        "stf_datataking-bob-0001",
        "stf_datataking-alice-0003",
    ]
    record = await repo.read(lambda db: rows.get_execution(db, ids[0]))
    assert (record.state, record.mode, record.params, record.job) == (
        "running", "fast", {"stf_count": 2}, None,
    )  # fmt: skip
    with pytest.raises(rows.UnknownExecution, match="no execution nosuch-alice-0001"):
        await repo.read(lambda db: rows.get_execution(db, "nosuch-alice-0001"))


async def test_states_and_figures_are_recorded_with_simulation_times(
    repo: Repository, autojump_clock: trio.testing.MockClock
) -> None:
    """Each state change is an event with its simulation time; at the end the figures give
    the seconds per state (a state entered twice adds up), messages per topic, the simulated
    seconds, and the workflow's metrics; a second end changes nothing."""
    record = await started(repo)
    clock = VirtualClock()
    execution = Execution(
        id=record.id, namespace="epic-daq", config=config_of({}), clock=clock, repo=repo
    )
    task = clock.task("root")
    CURRENT.set(task)
    await execution.state("beam", "not_ready")
    await task.sleep(5)
    await execution.state("run", "physics")
    execution.messages["stf_gen"] += 3
    await task.sleep(2.5)
    await execution.state("beam", "not_ready")
    await task.sleep(1)
    execution.metrics["stfs"] = 3
    ended = await execution.finish("completed", error=None)
    assert ended.state == "completed" and ended.figures is not None
    figures = ended.figures
    assert figures["states"] == {"beam/not_ready": 6, "run/physics": 2.5}
    assert (figures["simulated_seconds"], figures["messages"], figures["messages_total"]) == (
        8.5, {"stf_gen": 3}, 3,
    )  # fmt: skip
    assert figures["metrics"] == {"stfs": 3} and execution.ended.is_set()
    story: list[dict[str, Any]] = await repo.read(rows.execution_story(record.id))
    assert [(e["kind"], e["data"].get("sim_time")) for e in story] == [
        ("execution.started", 0),
        ("execution.state", 0),
        ("execution.state", 5),
        ("execution.state", 7.5),
        ("execution.ended", 8.5),
    ]
    again = await repo.write(
        rows.end_execution(record.id, "failed", error="late", figures={}, sim_time=9)
    )
    assert (again.state, again.error) == ("completed", None)


async def test_metrics_that_are_not_json_do_not_stop_the_end(
    repo: Repository, autojump_clock: trio.testing.MockClock
) -> None:
    """A workflow that puts a non-JSON value in its metrics still ends; the figures say why
    the metrics are missing."""
    record = await started(repo)
    execution = Execution(
        id=record.id, namespace="x", config=config_of({}), clock=VirtualClock(), repo=repo
    )
    execution.metrics["bad"] = object()
    ended = await execution.finish("failed", error="boom")
    assert (ended.state, ended.error) == ("failed", "boom")
    assert ended.figures is not None and ended.figures["metrics"] == {}
    assert "metrics are not JSON" in str(ended.figures["metrics_error"])


async def test_an_unknown_end_state_is_refused(repo: Repository) -> None:
    """Only completed, failed and cancelled end an execution."""
    with pytest.raises(ValueError, match="execution state 'done'"):
        rows.end_execution("x-y-0001", "done", error=None, figures={}, sim_time=0)
