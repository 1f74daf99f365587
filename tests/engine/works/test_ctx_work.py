"""``ctx.work``: a tasklet deposits works for pull workers and awaits their results; replayed
after an engine restart it finds the works it deposited, and deposits nothing twice."""

from __future__ import annotations

from pathlib import Path

import trio

from wfe.engine.cli.demo import make_workspace
from wfe.engine.config import Config, load_config
from wfe.engine.repository import works as rows
from wfe.engine.runtime.daemon import Engine, open_engine
from wfe.engine.runtime.jobs import JobState
from wfe.engine.works.model import WorkStatus

GUARD = 60.0
TASKLET = """
from typing import Any

from wfe.engine.runtime.actions import Context


async def main(ctx: Context, params: dict[str, Any]) -> Any:
    first = await ctx.work("adder", {"a": 1, "b": 2}, priority=5, tags=["t"])
    second = await ctx.work("adder", {"a": first.results["sum"], "b": 10})
    bad = await ctx.work("adder", {"a": 0, "b": 0}, retries=0, check=False)
    return {"sums": [first.results["sum"], second.results["sum"]], "bad": bad.status.value}
"""


def workspace(directory: Path) -> Config:
    """A workspace with no agents and an action ``t.adder`` (the tasklet above)."""
    path = make_workspace(directory, agents=0).root / "wfe.toml"
    actions = directory / "actions" / "t" / "adder"
    actions.mkdir(parents=True)
    (actions / "10_main.py").write_text(TASKLET)
    text = path.read_text().replace(
        'repository = "wfe.db"', 'repository = "wfe.db"\nactions = ["actions"]', 1
    )
    path.write_text(text)
    config = load_config(path)
    assert config.engine.actions == ("actions",), path.read_text()
    return config


async def serve_one(engine: Engine, *, fail: bool = False) -> str:
    """Act as a pull worker: withdraw the next ``adder`` work and record its sum (or fail)."""
    while True:
        work = await engine.withdraw_work(rows.WorkQuery(pipeline="adder"), worker="w1")
        if work is not None:
            break
        await trio.sleep(0.05)
    assert work.id is not None
    params = work.parameters
    changes = (
        {"status": "failure", "results": {"error": "no"}}
        if fail
        else {"status": "success", "results": {"sum": params["a"] + params["b"]}}
    )
    await engine.update_work(work.id, attempt=work.attempt, changes=changes, by="w1")
    return work.id


async def test_a_tasklet_deposits_works_and_gets_their_results(tmp_path: Path) -> None:
    """The action deposits one work at a time (the fields it gave stored with it), waits for a
    worker to finish each, and uses the results; a failed work is returned with check=False."""
    config = workspace(tmp_path / "ws")
    with trio.fail_after(GUARD):
        async with open_engine(config, start_local_agents=False) as engine:
            job = await engine.run_action("t.adder", {})
            first = await serve_one(engine)
            deposited = await engine.work(first)
            assert (deposited.priority, list(deposited.tags)) == (5, ["t"])
            await serve_one(engine)
            await serve_one(engine, fail=True)
            done = await engine.wait(job)
            assert done.state == JobState.SUCCEEDED
            assert done.result == {"sums": [3, 13], "bad": "failure"}
            assert await engine.count_works(rows.WorkQuery(pipeline="adder")) == 3


async def test_a_replayed_tasklet_finds_its_works_and_deposits_none_again(
    tmp_path: Path,
) -> None:
    """The engine stops while the action waits for its second work; started again, the action
    is replayed: its first call finds the finished work, its second the queued one, and after
    a worker finishes it the action ends with the same sums. Three works in all, never more."""
    config = workspace(tmp_path / "ws")
    with trio.fail_after(GUARD):
        async with open_engine(config, start_local_agents=False) as engine:
            job = await engine.run_action("t.adder", {})
            await serve_one(engine)
            adder = rows.WorkQuery(pipeline="adder")
            while await engine.count_works(adder) < 2:  # noqa: ASYNC110 - the repository's state
                await trio.sleep(0.05)
        async with open_engine(config, start_local_agents=False) as engine:
            queued = rows.WorkQuery(pipeline="adder", statuses=(WorkStatus.QUEUED,))
            while await engine.count_works(queued) < 1:  # noqa: ASYNC110 - the replay waits
                await trio.sleep(0.05)
            assert await engine.count_works(rows.WorkQuery(pipeline="adder")) == 2
            await serve_one(engine)
            await serve_one(engine, fail=True)
            done = await engine.wait(job)
            assert done.result == {"sums": [3, 13], "bad": "failure"}
            assert await engine.count_works(rows.WorkQuery(pipeline="adder")) == 3


async def test_a_bad_work_fails_the_tasklet_and_deposits_nothing(tmp_path: Path) -> None:
    """A tasklet asking for a work with a bad field fails with the one-line error; the bucket
    stays empty."""
    config = workspace(tmp_path / "ws")
    tasklet = config.root / "actions" / "t" / "adder" / "10_main.py"
    tasklet.write_text(TASKLET.replace("priority=5", "priority=9"))
    with trio.fail_after(GUARD):
        async with open_engine(config, start_local_agents=False) as engine:
            job = await engine.run_action("t.adder", {})
            done = await engine.wait(job)
            assert done.state == JobState.FAILED
            assert "priority: must be 1..5, got 9" in str(done.error)
            assert await engine.count_works(rows.WorkQuery()) == 0


async def test_withdraw_by_parent_takes_only_that_jobs_works(tmp_path: Path) -> None:
    """A work deposited by hand and one deposited by a tasklet share a bucket: withdrawing with
    ``parent`` (the tasklet's job) takes the tasklet's, even though the other is older and of
    higher priority; counting by parent sees only it."""
    from wfe.engine.works.model import parse_work

    config = workspace(tmp_path / "ws")
    with trio.fail_after(GUARD):
        async with open_engine(config, start_local_agents=False) as engine:
            [by_hand] = await engine.deposit_works(
                [parse_work({"pipeline": "adder", "parameters": {"a": 0, "b": 0}, "priority": 5})],
                by="alice",
            )
            job = await engine.run_action("t.adder", {})
            mine = rows.WorkQuery(pipeline="adder", parent=job)
            while await engine.count_works(mine) < 1:  # noqa: ASYNC110 - the repository's state
                await trio.sleep(0.05)
            work = await engine.withdraw_work(mine, worker="w1")
            assert work is not None and work.id != by_hand
            assert work.parameters == {"a": 1, "b": 2}
            assert await engine.count_works(rows.WorkQuery(parent="j999999")) == 0
