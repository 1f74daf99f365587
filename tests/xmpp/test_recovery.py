"""Losing the XMPP server or the engine mid-run loses nothing and runs nothing twice."""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import trio

from wfe.engine.devtools.prosody import ProsodyServer
from wfe.engine.runtime.daemon import open_engine

if TYPE_CHECKING:
    from conftest import Cluster

pytestmark = pytest.mark.xmpp


async def test_agents_and_engine_reconnect_after_prosody_restarts(
    prosody_factory: Callable[..., ProsodyServer],
    cluster_factory: Callable[[ProsodyServer], Cluster],
    h: Any,
) -> None:
    """Prosody restarts mid-run; engine and agents reconnect by themselves and every job
    succeeds exactly once."""
    server = prosody_factory()
    cluster = cluster_factory(server)
    config = cluster.config(agents={"heartbeat_deadline": 15.0})
    with trio.fail_after(90):
        async with open_engine(config) as engine:
            for _ in range(2):
                await cluster.start_agent()
            await h.until(engine, lambda: len(h.connected(engine)) == 2)
            job_ids = [
                await engine.run_rscript("sleep_echo", {"message": f"{n}", "seconds": 0.2})
                for n in range(40)
            ]
            await h.until(engine, lambda: engine.controller.statistics()["queued"] <= 28)
            await trio.to_thread.run_sync(server.restart)
            await h.run_all(engine, job_ids)
            await h.succeeded_once(engine, job_ids)
            assert len(h.connected(engine)) == 2
            for job_id in job_ids[-3:]:
                assert await engine.output(job_id) == f"{job_ids.index(job_id)}\n".encode()
    assert all(
        "online" in cluster.log(a).split("offline", 1)[-1] for a in cluster.accounts.values()
    )


#: Runs an engine in its own process: submits 4 long and 20 short jobs and prints their ids;
#: then, whenever at least ``argv[2]`` jobs have succeeded and a short one is running (as its
#: committed events tell), prints "ready" and stops itself (SIGSTOP), frozen as it was, for the
#: test to look at its repository and kill it, or let it go on (SIGCONT).
ENGINE_PROCESS = """
import os, signal, sys, trio
from pathlib import Path
from wfe.engine.config import load_config
from wfe.engine.runtime.daemon import open_engine

async def main(path, ready_after):
    async with open_engine(load_config(Path(path))) as engine, engine.repo.subscribe() as events:
        ids = [await engine.run_rscript("sleep_echo", {"message": "long", "seconds": 6}) for _ in range(4)]
        short = [await engine.run_rscript("sleep_echo", {"message": f"short {n}", "seconds": 0.4}) for n in range(20)]
        print(" ".join(ids + short), flush=True)
        done, running = set(), set()
        async for event in events:
            kind = getattr(event, "kind", "")
            if kind == "job.state" and event.data.get("state") == "succeeded":
                done.add(event.subject)
            elif kind == "attempt.state":
                key = (event.subject, event.data["attempt"])
                (running.add if event.data["state"] == "running" else running.discard)(key)
            if len(done) >= ready_after and any(job in short for job, _ in running):
                print("ready", flush=True)
                os.kill(os.getpid(), signal.SIGSTOP)

trio.run(main, sys.argv[1], int(sys.argv[2]))
"""


def in_flight(repository: Path, state: str) -> set[tuple[str, int]]:
    """The attempts the repository says are out on agents in ``state``: ``dispatched`` (sent,
    not yet accepted) or ``running`` (an agent said it started them)."""
    with sqlite3.connect(f"file:{repository}?mode=ro", uri=True) as db:
        rows = db.execute("SELECT job_id, attempt FROM attempts WHERE state = ?", (state,))
        return {(job_id, attempt) for job_id, attempt in rows}


async def test_an_engine_killed_mid_run_reconciles_with_its_agents(
    cluster: Cluster, h: Any
) -> None:
    """After SIGKILL of the engine, a new engine on the same repository records the results the
    agents held and reattaches what still runs: every attempt that was out succeeds as it was,
    nothing is re-run."""
    config = cluster.config()
    with trio.fail_after(90):
        for _ in range(2):
            await cluster.start_agent()
        with (config.root / "engine-1.log").open("wb") as log_file:
            process = await trio.lowlevel.open_process(
                [sys.executable, "-c", ENGINE_PROCESS, str(config.root / "wfe.toml"), "6"],
                stdout=subprocess.PIPE,
                stderr=log_file,
            )
        try:
            assert process.stdout is not None
            lines = Lines(process.stdout)
            job_ids = (await lines.next()).split()
            long_ones = {(j, 1) for j in job_ids[:4]}
            while True:  # until it is killed with long and short attempts out on agents
                assert await lines.next() == "ready"
                await stopped(process)
                # The repository is ahead of the events the engine saw: look at what it holds.
                running = in_flight(config.repository_path, "running")
                sent = in_flight(config.repository_path, "dispatched")
                if long_ones <= running and len(running) > len(long_ones):
                    break
                process.send_signal(signal.SIGCONT)
        finally:
            process.kill()
            await process.wait()
            await process.stdout.aclose()  # type: ignore[union-attr]
        async with open_engine(config) as engine:
            await h.run_all(engine, job_ids)
            jobs = await h.succeeded_once(engine, job_ids)
    attempts = {(j["id"], a["attempt"]): a["state"] for j in jobs for a in j["attempt_list"]}
    assert {key: attempts[key] for key in running} == dict.fromkeys(running, "succeeded")
    # A dispatch committed just before the kill may never have left the engine: the agents do
    # not know it, so it is lost and retried once; one that reached an agent succeeded as it was.
    for job_id, attempt in sent:
        assert attempts[job_id, attempt] in {"succeeded", "lost"}, (job_id, attempts)
    lost = {(job_id, attempt) for job_id, attempt in sent if attempts[job_id, attempt] == "lost"}
    retried = {job_id for job_id, _ in lost}
    assert all(j["attempts"] == (2 if j["id"] in retried else 1) for j in jobs), [
        (j["id"], j["attempts"]) for j in jobs
    ]
    # ... and no agent ran an attempt counted lost (an agent logs the end of each it ran).
    logs = "".join(cluster.log(account) for account in cluster.accounts.values())
    ran = {key for key in lost if re.search(rf"attempt {key[0]}#{key[1]} ended", logs)}
    assert not ran, (ran, logs)


async def stopped(process: trio.Process) -> None:
    """Wait until ``process`` has stopped (SIGSTOP) or ended."""

    def wait() -> None:
        os.waitid(os.P_PID, process.pid, os.WSTOPPED | os.WEXITED | os.WNOWAIT)

    await trio.to_thread.run_sync(wait, abandon_on_cancel=True)


class Lines:
    """Reads a byte stream line by line."""

    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self.stream = stream
        self.buffer = b""

    async def next(self) -> str:
        while b"\n" not in self.buffer:
            data = await self.stream.receive_some()
            assert data, f"the stream ended before a whole line: {self.buffer!r}"
            self.buffer += data
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line.decode()


async def all_running(engine: Any, job_ids: list[str]) -> bool:
    """Whether every job's attempt has been started by its agent (as the books say)."""
    for job_id in job_ids:
        attempts = (await engine.job(job_id))["attempt_list"]
        if [a["state"] for a in attempts] != ["running"]:
            return False
    return True


async def test_a_prosody_outage_longer_than_the_heartbeat_deadline_runs_nothing_twice(
    prosody_factory: Callable[..., ProsodyServer],
    cluster_factory: Callable[[ProsodyServer], Cluster],
    h: Any,
) -> None:
    """Prosody is down for 6 s, twice the engine's heartbeat deadline, while six jobs run: the
    engine was offline too, so that time does not count against its agents, and whatever
    the agents' reconnect order, their attempts are not fenced (the lease is 60 s): every job
    succeeds as its first and only attempt (issue 10, finding 2: 9 of 72 ran more than once)."""
    server = prosody_factory()
    cluster = cluster_factory(server)
    config = cluster.config(agents={"heartbeat_deadline": 3.0})
    with trio.fail_after(120):
        async with open_engine(config) as engine:
            for _ in range(2):
                await cluster.start_agent()
            await h.until(engine, lambda: len(h.connected(engine)) == 2)
            job_ids = [
                await engine.run_rscript("sleep_echo", {"message": f"{n}", "seconds": 9.0})
                for n in range(6)
            ]
            # every script started: no dispatch still in flight, which the outage could drop
            with trio.fail_after(30):
                while not await all_running(engine, job_ids):  # noqa: ASYNC110 - books, polled
                    await trio.sleep(0.05)
            await trio.to_thread.run_sync(server.stop)
            await h.until(engine, lambda: "xmpp" in engine.controller.transports_down)
            await trio.sleep(6.0)  # the outage itself: real time, two deadlines long
            await trio.to_thread.run_sync(server.start)
            await h.run_all(engine, job_ids)
            details = await h.succeeded_once(engine, job_ids)
            assert all(len(job["attempt_list"]) == 1 for job in details), [
                [a["state"] for a in job["attempt_list"]] for job in details
            ]
