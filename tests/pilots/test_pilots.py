"""Pilots on a real single-node Slurm: a real engine, a real Prosody, ``wfe pilots`` as a
process, and agents started by ``sbatch`` that join over XMPP."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import pytest
import trio

from wfe.engine.console.api import serve_api
from wfe.engine.console.tokens import digest, new_secret
from wfe.engine.keys import read_token
from wfe.engine.runtime.daemon import open_engine
from wfe.engine.runtime.facade import Engine

if TYPE_CHECKING:
    from conftest import Site

pytestmark = pytest.mark.xmpp

TERMINAL = frozenset({"succeeded", "failed", "cancelled"})


@asynccontextmanager
async def serving(config: Any) -> AsyncIterator[tuple[Engine, str]]:
    """The engine with its console on a free loopback port; an operator token for the
    factory."""
    async with open_engine(config) as engine, trio.open_nursery() as nursery:
        port = await nursery.start(
            lambda task_status: serve_api(
                engine,
                host="127.0.0.1",
                port=0,
                token=read_token(config),
                task_status=task_status,
            )
        )
        (config.run_dir / "api.port").write_text(f"{port}\n")
        secret = new_secret()
        await engine.create_token("factory", "operator", digest(secret), by="test")
        yield engine, secret
        nursery.cancel_scope.cancel()


async def until(engine: Engine, check: Callable[[], Any]) -> Any:
    """Wait until the awaitable ``check()`` gives something true, looking again after each
    committed event (and every second: a Slurm job's end is not an engine event)."""
    async with engine.subscribe(max_buffer=100_000) as events:
        while True:
            found = await check()
            if found:
                return found
            with trio.move_on_after(1):
                await events.__anext__()


async def pilots(engine: Engine) -> list[dict[str, Any]]:
    return await engine.pilots.listing(live=False, limit=100)


async def test_work_no_agent_can_take_brings_a_pilot_that_runs_it_and_leaves(site: Site) -> None:
    """With no agent connected, a queued job makes the factory submit one Slurm job; its agent
    joins over XMPP, runs the job and leaves when idle; the factory records the pilot from
    submission to its end (COMPLETED, exit 0), each step an event."""
    config = site.config()
    with trio.fail_after(120):
        async with serving(config) as (engine, token):
            job = await engine.run_rscript("marked", {"dir": str(site.markers), "hold": 0})
            assert engine.dispatch_statistics()["unplaceable"] == 1
            await site.start_factory(token, "--max", "2", "--idle-exit", "2", "--walltime", "600")

            async def job_over() -> Any:
                return (await engine.job(job))["state"] in TERMINAL

            await until(engine, job_over)

            async def pilot_ended() -> Any:
                rows = await pilots(engine)
                return rows if rows and all(r["state"] == "ended" for r in rows) else None

            rows = await until(engine, pilot_ended)
            detail = await engine.job(job)
            events = await engine.events(after=0, limit=1000, kind="pilot.")
    assert detail["state"] == "succeeded", detail["error"]
    [pilot] = rows
    assert pilot["system"] == "slurm" and pilot["factory"] == "factory"
    assert (pilot["end_state"], pilot["exit_code"]) == ("COMPLETED", 0)
    assert pilot["batch_id"] and pilot["started_at"] is not None
    assert pilot["requirements"] == {"cpus": 1}
    assert [a["agent"] for a in detail["attempt_list"]] == [pilot["agent"]]
    kinds = [e.kind for e in events if e.subject == f"pilot:{pilot['id']}"]
    assert kinds == ["pilot.created", "pilot.submitted", "pilot.started", "pilot.ended"]
    assert len(list(site.markers.glob("run-*"))) == len(list(site.markers.glob("done-*"))) == 1


async def test_killing_a_pilots_batch_job_mid_attempt_is_a_loss_run_again_once(
    site: Site,
) -> None:
    """scancel of the pilot's batch job while its attempt runs: the attempt is lost, the job
    is queued again, a second pilot runs it to success; the script ran twice, finished once
    (marker files, counted outside the engine); the first pilot ended CANCELLED."""
    config = site.config()
    markers = site.markers
    with trio.fail_after(180):
        async with serving(config) as (engine, token):
            job = await engine.run_rscript("marked", {"dir": str(markers), "hold": 300})
            await site.start_factory(token, "--max", "2", "--idle-exit", "3", "--walltime", "600")

            def attempt_running(number: int) -> Callable[[], Any]:
                async def check() -> Any:
                    attempts = (await engine.job(job))["attempt_list"]
                    return len(attempts) >= number and attempts[number - 1]["state"] == "running"

                return check

            await until(engine, attempt_running(1))

            async def script_began() -> Any:
                return list(markers.glob("run-*"))

            await until(engine, script_began)
            [first] = await pilots(engine)
            await trio.to_thread.run_sync(site.slurm.run, "scancel", first["batch_id"])
            await until(engine, attempt_running(2))
            (markers / "release").touch()

            async def job_over() -> Any:
                return (await engine.job(job))["state"] in TERMINAL

            await until(engine, job_over)

            async def both_ended() -> Any:
                rows = await pilots(engine)
                return rows if len(rows) == 2 and all(r["state"] == "ended" for r in rows) else None

            rows = {r["id"]: r for r in await until(engine, both_ended)}
            detail = await engine.job(job)
    assert detail["state"] == "succeeded", detail["error"]
    attempts = detail["attempt_list"]
    assert [a["state"] for a in attempts] == ["lost", "succeeded"]
    second = next(r for r in rows.values() if r["id"] != first["id"])
    assert [a["agent"] for a in attempts] == [first["agent"], second["agent"]]
    assert second["agent"] != first["agent"]  # not reused while an attempt was out on it
    assert rows[first["id"]]["end_state"] == "CANCELLED"
    assert second["end_state"] == "COMPLETED"
    assert len(list(markers.glob("run-*"))) == 2
    assert len(list(markers.glob("done-*"))) == 1


async def test_an_agent_near_its_walltime_takes_no_work_and_hands_back_what_runs(
    site: Site,
) -> None:
    """``wfe agent --walltime 45`` (drain and hand back 30 s before its end): 15 s in, it
    says hello again with no slot, its running attempt is killed and reported fenced, a loss
    the engine does not send back to it; it exits 0 by itself, and another agent runs the job
    to success (two runs, one finished)."""
    config = site.config()
    markers = site.markers
    accounts = sorted(site.accounts.iterdir())
    with trio.fail_after(120):
        async with serving(config) as (engine, _):
            job = await engine.run_rscript("marked", {"dir": str(markers), "hold": 300})
            first = await site.start_agent(accounts[0], "--walltime", "45")

            async def lost() -> Any:
                attempts = (await engine.job(job))["attempt_list"]
                return attempts and attempts[0]["state"] == "lost"

            await until(engine, lost)
            assert await first.wait() == 0  # it left by itself
            detail = await engine.job(job)
            assert [a["state"] for a in detail["attempt_list"]] == ["lost"]  # none sent back
            assert detail["state"] == "queued"
            [row] = [a for a in engine.agents() if a["name"] == accounts[0].name]
            assert row["slots"] == 0
            await site.start_agent(accounts[1])

            async def second_running() -> Any:
                attempts = (await engine.job(job))["attempt_list"]
                return len(attempts) == 2 and attempts[1]["state"] == "running"

            await until(engine, second_running)
            (markers / "release").touch()

            async def over() -> Any:
                return (await engine.job(job))["state"] in TERMINAL

            await until(engine, over)
            detail = await engine.job(job)
    assert detail["state"] == "succeeded", detail["error"]
    assert "lease" in (detail["attempt_list"][0]["detail"] or "")
    assert len(list(markers.glob("run-*"))) == 2
    assert len(list(markers.glob("done-*"))) == 1
