"""`wfe status --watch` follows the event subscription; `wfe logs` prints output page by page.

A real engine with one real local agent and its console on loopback runs in the test; the
`wfe` commands run as real processes (or, for the library functions, with a real websocket
client). Real time, every wait under ``trio.fail_after``.
"""

from __future__ import annotations

import hashlib
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio

from wfe.engine.cli.client import Client, connect
from wfe.engine.cli.demo import make_workspace
from wfe.engine.cli.watch import REDRAW_INTERVAL, print_logs, watch_status
from wfe.engine.config import Config
from wfe.engine.console.api import serve_api
from wfe.engine.keys import read_token
from wfe.engine.runtime.daemon import Engine, open_engine

GUARD = 60.0


class Running:
    """An engine, its console URL, and the path of its wfe.toml."""

    def __init__(self, engine: Engine, config: Config, url: str) -> None:
        self.engine = engine
        self.config = config
        self.url = url
        self.toml = config.root / "wfe.toml"

    def connect(self) -> Any:
        return connect(self.url, read_token(self.config))

    async def run(self, client: Client, rscript: str, **params: Any) -> str:
        started = await client.call("run", rscript=rscript, params=params)
        return str(started["job"])


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[Running]:
    config = make_workspace(tmp_path / "ws", agents=1)
    with trio.fail_after(GUARD):
        async with open_engine(config) as engine, trio.open_nursery() as nursery:
            port = await nursery.start(lambda task_status: serve_api(
                engine, host="127.0.0.1", port=0, token=read_token(config),
                task_status=task_status))  # fmt: skip
            (config.run_dir / "api.port").write_text(f"{port}\n")  # as `wfe engine` does
            async with engine.repo.subscribe() as events:  # until the agent is connected
                while not any(a["state"] == "connected" for a in engine.agents()):
                    await events.__anext__()
            yield Running(engine, config, f"ws://127.0.0.1:{port}/")
            nursery.cancel_scope.cancel()


class Output:
    """What a child process has written to a pipe so far, and a way to wait for more."""

    def __init__(self) -> None:
        self.data = b""
        self.closed = False
        self._changed = trio.Event()

    async def pump(self, stream: trio.abc.ReceiveStream) -> None:
        async for chunk in stream:
            self.data += chunk
            self._changed.set()
            self._changed = trio.Event()
        self.closed = True
        self._changed.set()

    @property
    def text(self) -> str:
        return self.data.decode()

    async def wait_for(self, needle: str) -> str:
        """Wait until ``needle`` is in the text; return the text after its last redraw."""
        while needle not in self.text:
            assert not self.closed, f"{needle!r} never came; output:\n{self.text}"
            await self._changed.wait()
        return self.text.split("---\n")[-1]


async def wfe(
    running: Running, *args: str, nursery: trio.Nursery
) -> tuple[trio.Process, Output, Output]:
    """Start ``wfe ARGS --config ...`` with its stdout and stderr collected."""
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "wfe", *args, "--config", str(running.toml)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = Output(), Output()
    assert process.stdout is not None and process.stderr is not None
    nursery.start_soon(out.pump, process.stdout)
    nursery.start_soon(err.pump, process.stderr)
    return process, out, err


async def console_streams(client: Client) -> int:
    return int((await client.call("stats"))["console"]["streams"])


async def test_status_watch_redraws_on_change_and_ends_on_ctrl_c(running: Running) -> None:
    """The overview is drawn at once, subscribes to events, redraws when a job is run and
    ends, and exits 0 without a traceback on SIGINT."""
    async with running.connect() as client, trio.open_nursery() as nursery:
        with trio.fail_after(GUARD):
            before = await console_streams(client)
            process, out, err = await wfe(running, "status", "--watch", nursery=nursery)
            first = await out.wait_for("agents 1")
            assert "dispatched 0" in first
            assert await console_streams(client) == before + 1  # it subscribed before drawing
            job = await running.run(client, "sleep_echo", message="hi")
            await client.call("wait", job=job)
            screen = await out.wait_for(f"{job}  sleep_echo")
            while "succeeded" not in screen:
                screen = await out.wait_for(f"{job}  sleep_echo  succeeded")
            assert "dispatched 1" in screen
            process.send_signal(signal.SIGINT)
            assert await process.wait() == 0
            nursery.cancel_scope.cancel()
    assert err.text == ""


async def test_status_watch_of_a_job_ends_with_the_job(running: Running) -> None:
    """`wfe status JOB --watch` redraws as the job changes and exits 0 once it has ended."""
    async with running.connect() as client, trio.open_nursery() as nursery:
        with trio.fail_after(GUARD):
            job = await running.run(client, "sleep_echo", message="x", seconds=30.0)
            process, out, err = await wfe(running, "status", job, "--watch", nursery=nursery)
            await out.wait_for("running")
            await client.call("kill", job=job)
            assert await process.wait() == 0
            assert out.text.split("---\n")[-1].startswith(f"{job}  rscript sleep_echo  cancelled")
            assert out.text.count("---\n") >= 1  # drawn at least twice: running, then cancelled
    assert err.text == ""


async def test_redraws_follow_changes_at_most_every_interval(running: Running) -> None:
    """Each committed change is followed by a redraw, and redraws are at least
    REDRAW_INTERVAL apart however many events come."""
    draws: list[tuple[float, dict[str, Any]]] = []
    all_seen = trio.Event()

    def draw(result: dict[str, Any]) -> None:
        draws.append((trio.current_time(), result))
        if result["statistics"]["dispatched_total"] == 20:
            all_seen.set()

    async with running.connect() as client, running.connect() as driver:
        with trio.fail_after(GUARD):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(lambda: watch_status(client, job=None, draw=draw))
                jobs = [await running.run(driver, "noop") for _ in range(20)]
                await all_seen.wait()  # each dispatch is an event: the last one is drawn
                nursery.cancel_scope.cancel()
    times = [t for t, _ in draws]
    assert len(times) >= 2
    assert all(b - a >= REDRAW_INTERVAL for a, b in zip(times, times[1:], strict=False))
    assert {j["id"] for j in draws[-1][1]["jobs"]} >= set(jobs)


async def test_status_watch_keeps_its_filters(running: Running) -> None:
    """``wfe status --watch --state failed`` redraws with the filters it was given: a failed
    job appears, a succeeded one never does."""
    shown: list[set[str]] = []
    seen = trio.Event()
    failed: list[str] = []

    def draw(result: dict[str, Any]) -> None:
        shown.append({j["id"] for j in result["jobs"]})
        if failed and failed[0] in shown[-1]:
            seen.set()

    async with running.connect() as client, running.connect() as driver:
        with trio.fail_after(GUARD):
            async with trio.open_nursery() as nursery:
                filters = {"limit": 20, "all": False, "state": ["failed"]}
                nursery.start_soon(
                    lambda: watch_status(client, job=None, draw=draw, filters=filters)
                )
                ok = await running.run(driver, "noop")
                await driver.call("wait", job=ok)
                failed.append(await running.run(driver, "sleep_echo", exit_code=3))
                await seen.wait()
                nursery.cancel_scope.cancel()
    assert all(ok not in ids for ids in shown)


async def test_logs_prints_big_output_whole_in_pages(running: Running) -> None:
    """Output larger than one page (1 MiB) is printed whole, page by page, by `wfe logs`."""
    size = 2 * 1024 * 1024 + 12345
    async with running.connect() as client:
        with trio.fail_after(GUARD):
            job = await running.run(client, "bigoutput", size=size)
            assert (await client.call("wait", job=job))["state"] == "succeeded"
            result = (await client.call("job", job=job))["result"]["results"]
            pages: list[str] = []
            assert await print_logs(client, job, attempt=None, write=pages.append) == 3
            assert [len(p) for p in pages[:2]] == [1024 * 1024] * 2
            async with trio.open_nursery() as nursery:
                process, out, err = await wfe(running, "logs", job, nursery=nursery)
                assert await process.wait() == 0
    printed = out.data
    assert len(printed) == size == result["bytes"]
    assert hashlib.sha256(printed).hexdigest() == result["sha256"]
    assert "".join(pages).encode() == printed
    assert err.text == ""


async def test_logs_of_a_job_that_never_ran_and_of_no_job(running: Running) -> None:
    """An action job (no attempt of its own) prints its stored ``ctx.log`` lines; an
    unknown job is a one-line error."""
    data = running.config.root / "data"
    async with running.connect() as client, trio.open_nursery() as nursery:
        with trio.fail_after(GUARD):
            job = await running.engine.run_action(
                "demo.survey", {"files": 0, "data_dir": str(data)}
            )
            await running.engine.wait(job)
            pages: list[str] = []
            assert await print_logs(client, job, attempt=None, write=pages.append) == 1
            [line] = "".join(pages).splitlines()
            assert line.endswith(f" INFO prepared 0 files in {data}")
            process, out, err = await wfe(running, "logs", "j999999", nursery=nursery)
            assert await process.wait() == 1
    assert err.text == "wfe: error: no job j999999\n"
