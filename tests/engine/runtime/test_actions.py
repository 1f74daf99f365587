"""Actions as trees of tasklets: order, shared params, child calls, failures, kills, replay."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest
import trio
from trio.testing import MockClock

from wfe.engine.errors import UnknownAction
from wfe.engine.runtime.actions import ActionRunner
from wfe.engine.runtime.tasklets import ActionLibrary, ParamTypeError
from wfe.engine.runtime.watchdog import Watchdog
from wfe.protocols.messages import Cancel, Dispatch, FinishReason

from ..conftest import FakeAgent, Harness, make_controller


def tasklet(root: Path, action: str, name: str, body: str) -> None:
    domain, act = action.split(".")
    folder = root / domain / act
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(textwrap.dedent(body))


class World:
    """A controller, an action runner on user tasklet folders, and an agent that obeys."""

    def __init__(
        self, harness: Harness, runner: ActionRunner, agent: FakeAgent, watchdog: Watchdog
    ) -> None:
        self.harness = harness
        self.runner = runner
        self.agent = agent
        self.watchdog = watchdog
        self.running: dict[tuple[str, int], trio.CancelScope] = {}

    async def obey(self) -> None:
        """Run every dispatch: sleep_echo sleeps then exits with its exit_code."""
        seen = 0
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.heartbeats)
            while True:
                dispatches = await self.agent.receive(Dispatch, seen + 1)
                for d in dispatches[seen:]:
                    nursery.start_soon(self._run, d)
                seen = len(dispatches)

    async def heartbeats(self) -> None:
        while True:
            await trio.sleep(1.0)
            self.agent.heartbeat(running=tuple(self.running))

    async def _run(self, d: Dispatch) -> None:
        self.agent.accept(d)
        with trio.CancelScope() as scope:
            self.running[(d.job_id, d.attempt)] = scope
            await trio.sleep(float(d.params.get("seconds", 0)))
            self.agent.finish(
                d, exit_code=int(d.params.get("exit_code", 0)), result={"echo": d.params}
            )
        del self.running[(d.job_id, d.attempt)]
        if scope.cancelled_caught:
            self.agent.finish(d, exit_code=None, signal=15, reason=FinishReason.CANCELLED)

    async def cancels(self) -> None:
        seen = 0
        while True:
            cancels = await self.agent.receive(Cancel, seen + 1)
            for c in cancels[seen:]:
                scope = self.running.get((c.job_id, c.attempt))
                if scope is not None:
                    scope.cancel()
            seen = len(cancels)

    async def run(self, name: str, **params: Any) -> Any:
        job_id = await self.runner.start(name, params)
        return await self.runner.wait(job_id)

    async def job(self, job_id: str) -> dict[str, Any]:
        return await self.harness.job(job_id)


@pytest.fixture
async def world(repo: Any, nursery: trio.Nursery, tmp_path: Path) -> World:
    harness = make_controller(repo)
    await nursery.start(harness.controller.run)
    watchdog = Watchdog(0.05)
    trio.lowlevel.add_instrument(watchdog)
    runner = ActionRunner(
        repo=repo,
        library=ActionLibrary([tmp_path / "actions"]),
        controller=harness.controller,
        completions=harness.completions,
        watchdog=watchdog,
        nursery=nursery,
    )
    w = World(harness, runner, harness.agent("a", slots=8, silent=True), watchdog)
    nursery.start_soon(w.obey)
    nursery.start_soon(w.cancels)
    return w


async def test_tasklets_share_params_in_priority_order(
    autojump_clock: MockClock, world: World, tmp_path: Path
) -> None:
    """Every matching tasklet runs, in order, on one params dict; the last value returned wins."""
    root = tmp_path / "actions"
    tasklet(
        root,
        "t.order",
        "a.py",
        "__priority__ = 2\nasync def main(ctx, p):\n    p['seen'].append('a')\n",
    )
    tasklet(
        root,
        "t.order",
        "b.py",
        "__priority__ = 1\nasync def main(ctx, p):\n    p['seen'] = ['b']\n",
    )
    tasklet(
        root,
        "t.order",
        "c.py",
        """
        __priority__ = 3
        def match(ctx, p):
            return p.get("skip") is not True
        async def main(ctx, p):
            return p['seen'] + ['c']
        """,
    )
    done = await world.run("t.order")
    assert (done.state, done.result) == ("succeeded", ["b", "a", "c"])
    skipped = await world.run("t.order", skip=True)
    assert skipped.state == "succeeded" and skipped.result is None


async def test_actions_call_actions_and_rscripts_and_every_call_is_a_job(
    autojump_clock: MockClock, world: World, tmp_path: Path
) -> None:
    """A root action waits for a child action that runs an RScript; all three are recorded."""
    root = tmp_path / "actions"
    tasklet(
        root,
        "t.parent",
        "main.py",
        "async def main(ctx, p):\n    return await ctx.call_action('t.child', n=2)\n",
    )
    tasklet(
        root,
        "t.child",
        "main.py",
        "async def main(ctx, p):\n    r = await ctx.rscript('sleep_echo', {'message': 'hi'})\n    return [p['n'], r.result]\n",
    )
    done = await world.run("t.parent")
    assert done.state == "succeeded"
    assert done.result[0] == 2
    job = await world.job(done.job_id)
    [child] = job["children"]
    assert (child["kind"], child["name"], child["state"]) == ("action", "t.child", "succeeded")
    grandchild = (await world.job(child["id"]))["children"][0]
    assert (grandchild["kind"], grandchild["name"]) == ("rscript", "sleep_echo")
    assert job["descendants"] == {"succeeded": 2}


async def test_start_without_waiting_then_join(
    autojump_clock: MockClock, world: World, tmp_path: Path
) -> None:
    """Children started together run concurrently: ten 5-second jobs take 5 seconds."""
    root = tmp_path / "actions"
    tasklet(
        root,
        "t.fan",
        "main.py",
        """
        async def main(ctx, p):
            handles = [await ctx.start_rscript('sleep_echo', {'seconds': 5.0}) for _ in range(8)]
            return len([await h.join() for h in handles])
        """,
    )
    start = trio.current_time()
    done = await world.run("t.fan")
    assert (done.state, done.result) == ("succeeded", 8)
    assert trio.current_time() - start == pytest.approx(5.0)


async def test_a_tasklet_that_raises_fails_its_job_with_one_line(
    autojump_clock: MockClock, world: World, tmp_path: Path
) -> None:
    """The error is recorded on the job, the parent sees it, the engine goes on."""
    root = tmp_path / "actions"
    tasklet(
        root,
        "t.boom",
        "main.py",
        "async def main(ctx, p):\n    raise ValueError('no good\\nsecond line')\n",
    )
    tasklet(
        root,
        "t.caller",
        "main.py",
        "async def main(ctx, p):\n    await ctx.call_action('t.boom')\n",
    )
    done = await world.run("t.boom")
    assert (done.state, done.error) == ("failed", "no good")
    caller = await world.run("t.caller")
    assert caller.state == "failed"
    assert caller.error.startswith("job j") and caller.error.endswith("failed: no good")
    # the runner still works:
    tasklet(root, "t.ok", "main.py", "async def main(ctx, p):\n    return 1\n")
    assert (await world.run("t.ok")).state == "succeeded"


async def test_a_failed_rscript_fails_the_tasklet_unless_unchecked(
    autojump_clock: MockClock, world: World, tmp_path: Path
) -> None:
    root = tmp_path / "actions"
    tasklet(
        root,
        "t.fail",
        "main.py",
        "async def main(ctx, p):\n    await ctx.rscript('sleep_echo', {'exit_code': 4})\n",
    )
    tasklet(
        root,
        "t.tolerant",
        "main.py",
        "async def main(ctx, p):\n    r = await ctx.rscript('sleep_echo', {'exit_code': 4}, check=False)\n    return r.exit_code\n",
    )
    failed = await world.run("t.fail")
    assert failed.state == "failed"
    assert failed.error.endswith("failed: attempt 1 exited with code 4")
    assert (await world.run("t.tolerant")).result == 4


async def test_unknown_action_and_bad_params_are_refused_before_recording(
    autojump_clock: MockClock, world: World, tmp_path: Path
) -> None:
    tasklet(
        tmp_path / "actions",
        "t.typed",
        "main.py",
        "__params__ = {'n': int}\nasync def main(ctx, p):\n    pass\n",
    )
    with pytest.raises(UnknownAction):
        await world.runner.start("t.nothing", {})
    with pytest.raises(ParamTypeError, match="parameter 'n' must be int, got str"):
        await world.runner.start("t.typed", {"n": "x"})
    count = await world.harness.repo.read(
        lambda c: c.execute("SELECT COUNT(*) FROM jobs").fetchone()[0]
    )
    assert count == 0


async def test_killing_an_action_kills_its_whole_tree(
    autojump_clock: MockClock, world: World, tmp_path: Path
) -> None:
    """Kill the root: the child action and the RScripts it runs are cancelled, on the agent too."""
    root = tmp_path / "actions"
    tasklet(
        root, "t.root", "main.py", "async def main(ctx, p):\n    await ctx.call_action('t.mid')\n"
    )
    tasklet(
        root,
        "t.mid",
        "main.py",
        """
        async def main(ctx, p):
            hs = [await ctx.start_rscript('sleep_echo', {'seconds': 1000.0}) for _ in range(3)]
            for h in hs:
                await h.join()
        """,
    )
    job_id = await world.runner.start("t.root", {})
    await world.agent.receive(Dispatch, 3)
    await trio.sleep(1)
    await world.runner.kill(job_id)
    with trio.fail_after(60):
        done = await world.runner.wait(job_id)
    assert done.state == "cancelled"
    with trio.fail_after(60):
        await world.agent.receive(Cancel, 3)
    with trio.fail_after(10):
        while True:
            states = await world.harness.repo.read(
                lambda c: dict(
                    c.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall()
                )
            )
            if states == {"cancelled": 5}:
                break
            await trio.sleep(0.1)


async def test_a_blocking_tasklet_is_reported_by_name(
    autojump_clock: MockClock, world: World, tmp_path: Path
) -> None:
    """A tasklet that holds the loop past the threshold is named in the watchdog's report."""
    tasklet(
        tmp_path / "actions",
        "t.blocker",
        "slow.py",
        "import time\nasync def main(ctx, p):\n    time.sleep(0.2)\n",
    )
    done = await world.run("t.blocker")
    assert done.state == "succeeded"
    [report] = [r for r in world.watchdog.reports if "t.blocker" in r.label]
    assert report.label == f"tasklet t.blocker/slow (job {done.job_id})"
    assert report.seconds >= 0.2


async def test_a_resumed_action_replays_its_calls_without_running_them_again(
    autojump_clock: MockClock, repo: Any, nursery: trio.Nursery, tmp_path: Path
) -> None:
    """An action interrupted by a shutdown is run again on the next start; the RScript it had
    finished is not dispatched again, the one it had not started is."""
    root = tmp_path / "actions"
    tasklet(
        root,
        "t.two",
        "main.py",
        """
        async def main(ctx, p):
            a = await ctx.rscript('sleep_echo', {'message': 'one'})
            b = await ctx.rscript('sleep_echo', {'message': 'two', 'seconds': 100.0})
            return [a.result['echo']['message'], b.result['echo']['message']]
        """,
    )

    async def engine(agent_name: str) -> tuple[ActionRunner, World, trio.CancelScope]:
        harness = make_controller(repo)
        await harness.controller.recover()
        runner = ActionRunner(
            repo=repo,
            library=ActionLibrary([root]),
            controller=harness.controller,
            completions=harness.completions,
            watchdog=None,
            nursery=nursery,
        )
        scope = trio.CancelScope()
        holder: list[World] = []

        async def serve(task_status: trio.TaskStatus[None]) -> None:
            with scope:
                async with trio.open_nursery() as inner:
                    await inner.start(harness.controller.run)
                    w = World(
                        harness,
                        runner,
                        harness.agent(agent_name, slots=4, silent=True),
                        Watchdog(1),
                    )
                    holder.append(w)
                    inner.start_soon(w.obey)
                    inner.start_soon(w.cancels)
                    task_status.started()

        await nursery.start(serve)
        return runner, holder[0], scope

    first, w1, scope1 = await engine("a")
    job_id = await first.start("t.two", {})
    await w1.agent.receive(Dispatch, 2)  # "one" finished, "two" running
    await repo.flush()
    # shutdown: cancel the first engine's tasks without recording anything
    scope1.cancel()
    for run in list(first._runs.values()):
        run.scope.cancel()
    await trio.sleep(1)
    assert (
        await repo.read(
            lambda c: c.execute("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()
        )
    )[0] == "running"

    second, w2, _ = await engine("b")
    assert await second.resume_unfinished() == 1
    done = await second.wait(job_id)
    assert (done.state, done.result) == ("succeeded", ["one", "two"])
    messages = [d.params["message"] for d in w2.agent.of_type(Dispatch)]
    assert messages == ["two"]  # "one" came from the repository


def test_garbage_collection_is_not_blamed_on_the_task() -> None:
    """A step that was long only because the collector ran is not reported."""
    import time

    watchdog = Watchdog(0.05)
    try:
        task: Any = type("FakeTask", (), {"name": "some task"})()
        watchdog.before_task_step(task)
        watchdog.on_gc("start", {})
        time.sleep(0.08)
        watchdog.on_gc("stop", {})
        watchdog.after_task_step(task)
        assert watchdog.reports == []
        watchdog.before_task_step(task)
        time.sleep(0.08)
        watchdog.after_task_step(task)
        assert [r.label for r in watchdog.reports] == ["some task"]
    finally:
        watchdog.close()
